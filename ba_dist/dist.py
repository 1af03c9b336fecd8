"""Distribution for ba_dist: MPI/Horovod start-up and the Batch Augmentation topology.

This is the only module that talks to MPI and Horovod directly. Everything else
asks it for a :class:`Topology` (pure arithmetic on rank and size) and
communicates through the small collective API at the end of this module:

    allreduce_mean(tensors)      gradients: average over all ranks (tf, graph-safe, grouped)
    allreduce_sum(value)         sums over all ranks (tf in -> tf out; numbers -> numpy)
    allreduce_max(x)             a host float, max over all ranks (timings)
    broadcast_from_chief(vars)   rank 0's variables to every rank (restore, start)
    broadcast_object(obj)        a picklable object from rank 0
    gather_to_chief(obj)         every rank's object, as a list on rank 0
    allgather(obj)               every rank's object, as a list on every rank
    barrier()                    every rank waits for all
    group_channel()              a private channel of the BA group (reader = root) for
                                 the input pipeline's buffer broadcasts

The MPI-only calls (``allreduce_max``, ``broadcast_object``, ``gather_to_chief``,
``barrier``) also work before :func:`init`, over MPI_COMM_WORLD: the preflight
runs before Horovod starts. It asks about the build through
:func:`horovod_build`, :func:`mpi_thread_level` and :func:`node_local_size`.
No other module imports horovod or mpi4py (``tests/test_dist.py``;
the thin Keras face ``ba_dist.keras`` is the public exception).

BA topology, for a world of ``N`` ranks and multiplicity ``M = m_ranks x m_local``::

    groups        N / m_ranks groups of m_ranks CONSECUTIVE ranks
                  (consecutive ranks usually share a node or a switch, so the
                  group's broadcast traffic stays local)
    group_id      rank // m_ranks
    rank_in_group rank %  m_ranks   (rank_in_group 0 is the group's reader)
    each rank     makes m_local augmented copies of each of its unique samples

Every rank of a group trains on the same unique samples; groups get disjoint
shards. With ``b`` unique samples per rank the global batch is::

    N ranks x (m_local x b) examples = (N / m_ranks x b) unique x M copies

Impossible topologies are rejected by :func:`validate_topology` on every rank
*before* any collective is issued, so a bad launch exits instead of hanging.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any, Optional, Sequence

import numpy as np

__all__ = [
    "TopologyError",
    "Topology",
    "Context",
    "validate_topology",
    "make_topology",
    "world_rank_and_size",
    "init",
    "init_for_layout",
    "context",
    "abort",
    "allreduce_mean",
    "allreduce_sum",
    "allreduce_max",
    "broadcast_from_chief",
    "broadcast_object",
    "gather_to_chief",
    "allgather",
    "barrier",
    "GroupChannel",
    "group_channel",
    "horovod_build",
    "mpi_thread_level",
    "node_local_size",
]


class TopologyError(ValueError):
    """A BA topology that cannot be laid out on the given world."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """Where one rank sits in the BA layout. Pure data, no communicators."""

    rank: int
    world_size: int
    m_ranks: int = 1
    m_local: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def multiplicity(self) -> int:
        """Total BA multiplicity M: copies of every unique sample in the global batch."""
        return self.m_ranks * self.m_local

    @property
    def num_groups(self) -> int:
        return self.world_size // self.m_ranks

    @property
    def group_id(self) -> int:
        return self.rank // self.m_ranks

    @property
    def rank_in_group(self) -> int:
        return self.rank % self.m_ranks

    @property
    def group_ranks(self) -> tuple[int, ...]:
        """Global ranks of this rank's group, reader first."""
        first = self.group_id * self.m_ranks
        return tuple(range(first, first + self.m_ranks))

    @property
    def reader_rank(self) -> int:
        """Global rank that reads and decodes files for the group."""
        return self.group_ranks[0]

    @property
    def is_reader(self) -> bool:
        return self.rank_in_group == 0

    @property
    def is_chief(self) -> bool:
        """Rank 0: the only rank that writes logs, checkpoints and progress bars."""
        return self.rank == 0

    def all_groups(self) -> list[tuple[int, ...]]:
        return [tuple(range(g * self.m_ranks, (g + 1) * self.m_ranks)) for g in range(self.num_groups)]

    def describe(self) -> str:
        return (f"rank {self.rank}/{self.world_size} (local {self.local_rank}/{self.local_size}), "
                f"group {self.group_id}/{self.num_groups} rank-in-group {self.rank_in_group}/{self.m_ranks}, "
                f"M = {self.m_ranks} ranks x {self.m_local} local = {self.multiplicity}")


def validate_topology(world_size: int, m_ranks: int, m_local: int = 1) -> None:
    """Raise :class:`TopologyError` if ``m_ranks`` x ``m_local`` cannot be laid out on ``world_size`` ranks.

    Depends only on its arguments, so every rank reaches the same verdict
    without communicating.
    """
    for name, value in (("world size", world_size), ("m_ranks", m_ranks), ("m_local", m_local)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TopologyError(f"{name} must be an integer, got {value!r}")
        if value < 1:
            raise TopologyError(f"{name} must be >= 1, got {value}")
    if world_size % m_ranks:
        raise TopologyError(
            f"world size {world_size} is not divisible by m_ranks={m_ranks}: BA groups are "
            f"m_ranks consecutive ranks, so launch a multiple of {m_ranks} ranks "
            f"(e.g. {m_ranks * max(1, world_size // m_ranks)} or {m_ranks * (world_size // m_ranks + 1)}) "
            f"or choose an m_ranks that divides {world_size}")


def make_topology(rank: int, world_size: int, m_ranks: int = 1, m_local: int = 1,
                  local_rank: int = 0, local_size: int = 1) -> Topology:
    """Validated :class:`Topology` for one rank (no MPI involved)."""
    validate_topology(world_size, m_ranks, m_local)
    if not 0 <= rank < world_size:
        raise TopologyError(f"rank {rank} outside world of size {world_size}")
    return Topology(rank, world_size, m_ranks, m_local, local_rank, local_size)


def _node_rank_and_size(world) -> tuple[int, int]:
    """(rank, size) among the ranks of ``world`` that share this node (collective over ``world``)."""
    from mpi4py import MPI
    local = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def node_local_size() -> int:
    """Ranks of the job on this node. Collective over all ranks; works before :func:`init`."""
    return _node_rank_and_size(_world())[1]


def horovod_build() -> dict:
    """Horovod's version and build (``horovodrun --check-build``), without starting Horovod.

    Returns:
      ``{"version": str, "TensorFlow": bool, "MPI": bool, "Gloo": bool, "NCCL": bool}``.
    """
    import horovod
    import horovod.tensorflow as hvd
    from horovod.common.util import extension_available
    return {"version": horovod.__version__, "TensorFlow": bool(extension_available("tensorflow")),
            "MPI": bool(hvd.mpi_built()), "Gloo": bool(hvd.gloo_built()), "NCCL": bool(hvd.nccl_built())}


def mpi_thread_level() -> tuple[str, bool, str]:
    """``(level name, is MPI_THREAD_MULTIPLE, MPI library)`` that MPI granted this process.

    The group loader broadcasts in a thread while Horovod's background thread
    also calls MPI, so anything below ``MULTIPLE`` cannot work.
    """
    from mpi4py import MPI
    names = {MPI.THREAD_SINGLE: "SINGLE", MPI.THREAD_FUNNELED: "FUNNELED", MPI.THREAD_SERIALIZED: "SERIALIZED",
             MPI.THREAD_MULTIPLE: "MULTIPLE"}
    level = MPI.Query_thread()
    return names.get(level, str(level)), level >= MPI.THREAD_MULTIPLE, MPI.Get_library_version().splitlines()[0].strip()


def world_rank_and_size() -> tuple[int, int]:
    """(rank, size) of MPI_COMM_WORLD; (0, 1) for a plain process outside mpirun."""
    from mpi4py import MPI  # initialises MPI; a singleton process is rank 0 of 1
    comm = MPI.COMM_WORLD
    return comm.Get_rank(), comm.Get_size()


@dataclasses.dataclass
class Context:
    """A live BA topology: the :class:`Topology` plus the handles this module uses.

    Code outside this module uses ``topology`` and the collective functions
    below, not the handles (tests may inspect them).

    Attributes:
      topology: the rank's place in the layout.
      hvd: the initialised ``horovod.tensorflow`` module.
      group_comm: mpi4py sub-communicator of the group; the reader is rank 0 in it.
      world_comm: mpi4py ``COMM_WORLD``.
    """

    topology: Topology
    hvd: Any
    group_comm: Any
    world_comm: Any

    @property
    def rank(self) -> int:
        return self.topology.rank

    @property
    def size(self) -> int:
        return self.topology.world_size


_CONTEXT: Optional[Context] = None
_LOCK = threading.Lock()


def _pin_gpu(local_rank: int) -> None:
    """One GPU per rank, by local rank, with memory growth (as Horovod's examples do)."""
    import tensorflow as tf
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[local_rank % len(gpus)], "GPU")


def _install_abort_hook(world_size: int) -> None:
    """Turn an uncaught exception on any rank into MPI_Abort of the whole job.

    Without it, the other ranks would sit in their next allreduce forever
    while the failed rank waits in Horovod's shutdown.
    """
    if world_size <= 1:
        return
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        if not issubclass(exc_type, (KeyboardInterrupt, SystemExit)):
            abort(1)

    sys.excepthook = hook


def abort(code: int = 1) -> None:
    """Abort every rank of the job (MPI_Abort). Use after an unrecoverable error."""
    from mpi4py import MPI
    sys.stdout.flush()
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)


def init(m_ranks: int = 1, m_local: int = 1, *, pin_gpu: bool = True,
         abort_on_error: bool = True) -> Context:
    """Start MPI and Horovod and lay out the BA groups. Idempotent per process.

    The topology is validated from the world size alone before Horovod starts,
    so an impossible layout raises :class:`TopologyError` on every rank and no
    rank is left waiting in a collective.

    Args:
      m_ranks: ranks per BA group (each group trains on the same unique samples).
      m_local: augmented copies of each sample made on every rank.
      pin_gpu: give each rank the GPU of its local rank (memory growth on).
      abort_on_error: MPI_Abort the job when any rank dies of an uncaught exception.

    Returns:
      The process-wide :class:`Context`.
    """
    global _CONTEXT
    with _LOCK:
        if _CONTEXT is not None:
            t = _CONTEXT.topology
            if t.m_ranks != m_ranks:
                raise TopologyError(
                    f"ba_dist.dist.init already called with m_ranks={t.m_ranks}; the groups (process sets, "
                    f"communicators) cannot be re-laid out as m_ranks={m_ranks} in the same process")
            if t.m_local != m_local:
                # copies per rank are a rank-local choice: no communicator depends on them
                validate_topology(t.world_size, m_ranks, m_local)
                _CONTEXT = dataclasses.replace(_CONTEXT, topology=dataclasses.replace(t, m_local=m_local))
            return _CONTEXT
        from mpi4py import MPI
        world = MPI.COMM_WORLD
        rank, size = world.Get_rank(), world.Get_size()
        validate_topology(size, m_ranks, m_local)  # before any collective

        local_rank, local_size = _node_rank_and_size(world)
        topo = make_topology(rank, size, m_ranks, m_local, local_rank, local_size)
        if abort_on_error:
            _install_abort_hook(size)
        if pin_gpu:
            _pin_gpu(local_rank)

        import horovod.tensorflow as hvd
        # No Horovod process sets: the group's only collective is the input
        # broadcast, which runs on an MPI sub-communicator (group_channel), and
        # registering N / m_ranks sets at start-up (128 at 512 ranks) buys nothing.
        hvd.init(comm=world)
        if (hvd.rank(), hvd.size()) != (rank, size):
            raise RuntimeError(f"Horovod sees rank {hvd.rank()}/{hvd.size()} but MPI sees {rank}/{size}")
        group_comm = world.Split(color=topo.group_id, key=rank)
        _CONTEXT = Context(topo, hvd, group_comm, world)
        return _CONTEXT


def init_for_layout(layout, *, deterministic: bool = False, seed: int = 0, **kwargs) -> Context:
    """:func:`init` for a trainer's batch layout (anything with ``m_ranks`` and ``m_local``).

    With ``deterministic``, also seeds Python/NumPy/TF from ``seed`` and turns on
    TensorFlow's op determinism (bitwise-reproducible runs on CPU).
    """
    validate_topology(layout.world_size, layout.m_ranks, layout.m_local)
    ctx = init(m_ranks=layout.m_ranks, m_local=layout.m_local, **kwargs)
    if deterministic:
        import tensorflow as tf
        tf.keras.utils.set_random_seed(seed)
        tf.config.experimental.enable_op_determinism()
    return ctx


def context() -> Context:
    """The context created by :func:`init`; raises if :func:`init` was not called."""
    if _CONTEXT is None:
        raise RuntimeError("ba_dist.dist.init() has not been called in this process")
    return _CONTEXT



# ---------------------------------------------------------------------------
# The collective API. Every rank must make the same calls in the same order
# (as with any collective); ``name`` keeps Horovod's tensor names unique.


def allreduce_mean(tensors: Sequence[Any], *, name: Optional[str] = None, fp16: bool = False) -> list:
    """Average of each tensor over all ranks, as one grouped allreduce.

    Works eagerly and inside ``tf.function`` (the training step). ``None``
    entries (variables without a gradient) stay ``None``; ``tf.IndexedSlices``
    are made dense first (one allreduce instead of Horovod's two allgathers);
    one rank returns the tensors as they are.

    Args:
      tensors: tensors of any shapes (typically this rank's gradients).
      name: prefix of Horovod's tensor names.
      fp16: send as float16 (Horovod's fp16 compression), results cast back.
    """
    ctx = context()
    out = list(tensors)
    if ctx.size == 1:
        return out
    hvd = ctx.hvd
    import tensorflow as tf
    # sparse gradients (embeddings) go dense: one allreduce, as sparse_as_dense=True
    out = [tf.convert_to_tensor(t) if isinstance(t, tf.IndexedSlices) else t for t in out]
    present = [i for i, t in enumerate(out) if t is not None]
    compression = hvd.Compression.fp16 if fp16 else hvd.Compression.none
    reduced = hvd.grouped_allreduce([out[i] for i in present], op=hvd.Average, compression=compression,
                                    name=name)
    for i, t in zip(present, reduced):
        out[i] = t
    return out


def allreduce_sum(value: Any, *, name: Optional[str] = None) -> Any:
    """Sum over all ranks.

    A ``tf.Tensor`` comes back as a ``tf.Tensor`` (graph-safe); a Python
    number or numpy array comes back as a float64 numpy array.
    """
    ctx = context()
    import tensorflow as tf
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return value if ctx.size == 1 else ctx.hvd.allreduce(value, op=ctx.hvd.Sum, name=name)
    arr = np.asarray(value, np.float64)
    if ctx.size == 1:
        return arr
    return ctx.hvd.allreduce(tf.constant(arr), op=ctx.hvd.Sum, name=name).numpy()


def _world():
    """MPI_COMM_WORLD (the context's, or MPI's own before :func:`init`)."""
    if _CONTEXT is not None:
        return _CONTEXT.world_comm
    from mpi4py import MPI
    return MPI.COMM_WORLD


def allreduce_max(value: float) -> float:
    """Maximum of a host number over all ranks (e.g. the slowest rank's time)."""
    comm = _world()
    if comm.Get_size() == 1:
        return float(value)
    from mpi4py import MPI
    return float(comm.allreduce(float(value), op=MPI.MAX))


def broadcast_from_chief(variables: Sequence[Any]) -> None:
    """Overwrite ``variables`` on every rank with rank 0's values."""
    ctx = context()
    if ctx.size > 1 and variables:
        ctx.hvd.broadcast_variables(list(variables), root_rank=0)


def broadcast_object(obj: Any = None) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank; other ranks' arguments are ignored."""
    comm = _world()
    return obj if comm.Get_size() == 1 else comm.bcast(obj, root=0)


def gather_to_chief(obj: Any) -> Optional[list]:
    """Every rank's ``obj`` as a list in rank order on rank 0; ``None`` elsewhere."""
    comm = _world()
    return [obj] if comm.Get_size() == 1 else comm.gather(obj, root=0)


def allgather(obj: Any) -> list:
    """Every rank's picklable ``obj``, as a list in rank order, on every rank."""
    ctx = context()
    return [obj] if ctx.size == 1 else ctx.world_comm.allgather(obj)


def barrier() -> None:
    """Return on every rank only once every rank has called it."""
    comm = _world()
    if comm.Get_size() > 1:
        comm.Barrier()


class GroupChannel:
    """A private broadcast channel of one BA group; the group's reader is the root.

    Each channel is its own duplicate of the group communicator, so the
    broadcasts of one input loader can never match those of another (e.g. one
    abandoned mid-epoch that is still draining in the background).
    """

    def __init__(self, comm):
        self._comm = comm.Dup()
        self.rank = self._comm.Get_rank()   # rank in the group; 0 is the reader
        self.size = self._comm.Get_size()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def bcast(self, buffer: np.ndarray) -> None:
        """In place: the reader's contiguous numpy ``buffer`` lands in every rank's ``buffer``."""
        self._comm.Bcast(buffer, root=0)

    def bcast_object(self, obj: Any = None) -> Any:
        """The reader's picklable ``obj`` on every rank of the group (start-up messages, not pixels)."""
        return self._comm.bcast(obj, root=0)

    def close(self) -> None:
        """Release the communicator (collective over the group; optional)."""
        self._comm.Free()


def group_channel() -> Optional[GroupChannel]:
    """A new :class:`GroupChannel` for this rank's group; ``None`` for groups of one rank.

    Collective over the group: every rank of the group must call it.
    """
    ctx = context()
    return GroupChannel(ctx.group_comm) if ctx.topology.m_ranks > 1 else None
