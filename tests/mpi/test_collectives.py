"""Run by every rank at once under mpirun (launched from tests/test_multirank.py).

Expected values are derived from rank and size, so the same file checks any
world size and any m_ranks that divides it.
"""
import os

import numpy as np
import pytest
import tensorflow as tf

from ba_dist import dist

M_RANKS = int(os.environ.get("BA_DIST_TEST_M_RANKS", "1"))
M_LOCAL = int(os.environ.get("BA_DIST_TEST_M_LOCAL", "1"))


@pytest.fixture(scope="module")
def ctx():
    return dist.init(m_ranks=M_RANKS, m_local=M_LOCAL)


def test_horovod_agrees_with_mpi(ctx):
    hvd = ctx.hvd
    assert hvd.size() == ctx.world_comm.Get_size() == int(os.environ["OMPI_COMM_WORLD_SIZE"])
    assert hvd.rank() == ctx.world_comm.Get_rank() == int(os.environ["OMPI_COMM_WORLD_RANK"])
    assert hvd.local_rank() == ctx.topology.local_rank


def test_world_allreduce(ctx):
    hvd, n, r = ctx.hvd, ctx.size, ctx.rank
    total = hvd.allreduce(tf.constant([float(r), 1.0]), op=hvd.Sum).numpy()
    np.testing.assert_array_equal(total, [n * (n - 1) / 2, n])
    mean = hvd.allreduce(tf.constant(float(r)), op=hvd.Average).numpy()
    assert mean == pytest.approx((n - 1) / 2)


def test_group_arithmetic(ctx):
    t = ctx.topology
    assert t.num_groups * t.m_ranks == t.world_size
    assert t.group_id * t.m_ranks + t.rank_in_group == t.rank
    assert t.rank in t.group_ranks and t.reader_rank == t.group_ranks[0]
    # every rank's view of the layout is identical: gather and compare
    views = ctx.world_comm.allgather((t.rank, t.group_id, t.rank_in_group, t.num_groups))
    assert [v[0] for v in views] == list(range(t.world_size))
    assert all(v[1] == v[0] // M_RANKS and v[2] == v[0] % M_RANKS for v in views)
    assert ctx.group_comm.Get_size() == M_RANKS
    assert ctx.group_comm.Get_rank() == t.rank_in_group


def test_collective_api(ctx):
    n, r = ctx.size, ctx.rank
    # gradients: grouped average, None kept, fp16 compression still averages
    g = dist.allreduce_mean([tf.constant([float(r), 1.0]), None, tf.constant(2.0 * r)], name="t_mean")
    np.testing.assert_allclose(g[0].numpy(), [(n - 1) / 2, 1.0])
    assert g[1] is None and float(g[2]) == pytest.approx(n - 1)
    h = dist.allreduce_mean([tf.constant([float(r)])], name="t_mean16", fp16=True)
    assert float(h[0][0]) == pytest.approx((n - 1) / 2, rel=1e-3)
    # sums: tf in -> tf out, numbers in -> numpy out
    assert isinstance(dist.allreduce_sum(tf.constant(1.0), name="t_sum"), tf.Tensor)
    np.testing.assert_array_equal(dist.allreduce_sum([r, 1], name="t_sum2"), [n * (n - 1) / 2, n])
    assert dist.allreduce_max(float(r)) == n - 1
    assert dist.broadcast_object({"from": r}) == {"from": 0}
    got = dist.gather_to_chief(r * 10)
    assert got == ([10 * q for q in range(n)] if r == 0 else None)
    v = tf.Variable([float(r)])
    dist.broadcast_from_chief([v])
    assert float(v[0]) == 0.0
    dist.barrier()


def test_group_channel_broadcasts_from_the_groups_reader(ctx):
    t = ctx.topology
    channel = dist.group_channel()
    if t.m_ranks == 1:
        assert channel is None
        pytest.skip("groups of one rank have nothing to broadcast")
    assert channel.size == t.m_ranks and channel.is_root == t.is_reader
    buf = np.full(16, 100 * t.rank + 7, np.int64)
    channel.bcast(buf)
    # the value comes from this group's reader, not from rank 0 of the world
    assert (buf == 100 * t.reader_rank + 7).all()
    channel.close()


def test_group_subcommunicator_broadcast(ctx):
    t = ctx.topology
    buf = np.full(1000, t.rank, dtype=np.int64)
    ctx.group_comm.Bcast(buf, root=0)
    assert (buf == t.reader_rank).all()


def test_init_is_idempotent_and_rejects_a_different_layout(ctx):
    assert dist.init(m_ranks=M_RANKS, m_local=M_LOCAL) is ctx
    with pytest.raises(dist.TopologyError, match="already called"):
        dist.init(m_ranks=2 * M_RANKS, m_local=M_LOCAL)
    # m_local is rank-local: a new value keeps the communicators
    other = dist.init(m_ranks=M_RANKS, m_local=M_LOCAL + 1)
    assert other.topology.m_local == M_LOCAL + 1 and other.group_comm is ctx.group_comm
    assert dist.init(m_ranks=M_RANKS, m_local=M_LOCAL).topology == ctx.topology
