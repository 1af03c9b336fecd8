"""Single-process tests of the decoded broadcast payload (the multi-rank send: tests/mpi/test_pipeline.py)."""
import concurrent.futures

import numpy as np
import pytest

from ba_dist.data.broadcast import BufferPool, DecodedPayload, DecodedReceiver


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (int(rng.integers(5, 40)), int(rng.integers(5, 40)), 3), dtype=np.uint8)
            for _ in range(n)]


@pytest.mark.parametrize("capacity", [0, 100, 10**6])
def test_images_put_from_threads_are_views_into_the_one_buffer(capacity):
    imgs = _images(24)
    payload = DecodedPayload(len(imgs), capacity)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # the loader's read threads
        list(pool.map(payload.put, range(len(imgs)), imgs))
    assert payload.nbytes == sum(im.nbytes for im in imgs)  # packed: no gaps, nothing twice
    pixels, sent = payload.pixels, payload.message
    assert np.shares_memory(pixels, sent) and sent.nbytes == pixels.nbytes + 8 * (6 + 6 * len(imgs))  # header first
    out = payload.images()
    for got, want in zip(out, imgs):
        np.testing.assert_array_equal(got, want)
        assert np.shares_memory(got, pixels)  # the bytes sent are the reader's images: no packing pass
    # the slots tile the pixel bytes exactly once
    base = pixels.__array_interface__["data"][0]
    ends = sorted((g.__array_interface__["data"][0] - base, g.nbytes) for g in out)
    assert [o for o, _ in ends] == list(np.cumsum([0] + [n for _, n in ends[:-1]]))


def test_alias_points_a_slot_at_its_substitute_without_copying():
    imgs = _images(4, seed=1)
    payload = DecodedPayload(4)
    for k in (0, 1, 3):
        payload.put(k, imgs[k])
    with pytest.raises(ValueError, match=r"slot\(s\) \[2\]"):
        payload.images()
    payload.alias(2, 3)
    out = payload.images()
    np.testing.assert_array_equal(out[2], imgs[3])
    assert np.shares_memory(out[2], out[3])
    assert payload.nbytes == sum(imgs[k].nbytes for k in (0, 1, 3))
    with pytest.raises(ValueError, match="holds no image"):
        DecodedPayload(2).alias(0, 1)


def test_put_rejects_what_the_wire_format_cannot_carry():
    with pytest.raises(ValueError, match="uint8 HxWxC"):
        DecodedPayload(1).put(0, np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="uint8 HxWxC"):
        DecodedPayload(1).put(0, np.zeros((4, 4, 3), np.float32))


def test_step_buffers_are_reused_only_once_no_view_of_them_is_alive():
    pool = DecodedReceiver(channel=None, count=4).buffers
    a = pool.get(1000)
    assert a.ctypes.data % (2 << 20) == 0 and a.flags.writeable  # huge-page aligned
    image = a[100:400].reshape(10, 10, 3)  # what recv hands out: views into the buffer
    del a
    b = pool.get(1000)
    assert not np.shares_memory(b, image)  # `image` still needs the first buffer
    del image, b
    c = pool.get(900)
    assert np.shares_memory(c, pool._spare[0]) or np.shares_memory(c, pool._spare[1])
    assert len(pool._spare) == 2  # reused, not allocated


def test_reader_payloads_reuse_the_buffer_of_a_step_no_longer_viewed():
    pool = BufferPool()
    imgs = [np.full((5, 6, 3), k, np.uint8) for k in range(3)]

    def step():
        payload = DecodedPayload(len(imgs), 0, pool=pool)
        for k, im in enumerate(imgs):
            payload.put(k, im)
        return payload

    first = step()
    held = first.images()  # the reader's consumer still holds the first step's images
    second = step()
    assert not np.shares_memory(first.message, second.message)
    address, buffers = second.message.__array_interface__["data"][0], len(pool._spare)
    del first, second
    third = step()  # the second step is gone: its buffer comes back
    assert third.message.__array_interface__["data"][0] == address
    assert len(pool._spare) == buffers  # reused, not allocated
    assert all((v == k).all() for k, v in enumerate(held))  # the held step is untouched
    assert all((v == k).all() for k, v in enumerate(third.images()))
