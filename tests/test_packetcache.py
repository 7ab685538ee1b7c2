"""The per-track packet cache: NACK lookups and the keyframe window for replay."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media.packetcache import PacketCache, PacketCacheError


def test_get_returns_recent_and_forgets_old():
    cache = PacketCache(capacity=8)
    for seq in range(20):
        cache.add(seq, bytes([seq]))
    assert cache.get(19) == bytes([19])
    assert cache.get(12) == bytes([12])
    assert cache.get(11) is None  # overwritten by 19
    assert cache.get(500) is None


def test_since_keyframe_across_wraparound():
    cache = PacketCache(capacity=16)
    cache.add(65534, b"k", keyframe_start=True, now=1.0)
    cache.add(65535, b"a")
    cache.add(0, b"b")
    cache.add(1, b"c")
    assert cache.since_keyframe() == [b"k", b"a", b"b", b"c"]
    assert cache.keyframe_time == 1.0


def test_since_keyframe_none_when_a_packet_is_missing_or_too_old():
    cache = PacketCache(capacity=16)
    cache.add(10, b"k", keyframe_start=True)
    cache.add(12, b"x")  # 11 lost
    assert cache.since_keyframe() is None
    cache.add(11, b"y")  # repaired late
    assert cache.since_keyframe() == [b"k", b"y", b"x"]
    for seq in range(13, 40):
        cache.add(seq, b"z")
    assert cache.since_keyframe() is None  # the keyframe fell out of the ring


def test_no_keyframe_no_replay():
    cache = PacketCache()
    cache.add(1, b"a")
    assert cache.since_keyframe() is None
    cache.add(2, b"k", keyframe_start=True)
    cache.clear()
    assert cache.since_keyframe() is None and cache.get(2) is None


@given(st.integers(0, 0xFFFF), st.integers(1, 60))
def test_window_is_every_packet_in_order(start, count):
    cache = PacketCache(capacity=64)
    for i in range(count):
        seq = (start + i) & 0xFFFF
        cache.add(seq, seq.to_bytes(2, "big"), keyframe_start=(i == 0))
    window = cache.since_keyframe()
    assert window == [((start + i) & 0xFFFF).to_bytes(2, "big") for i in range(count)]


@pytest.mark.parametrize("start", [65536 - 600, 65536 - 1, 32768 - 100])
def test_every_recent_packet_is_kept_across_the_wrap(start):
    """512 slots divide the 16-bit space: the last `capacity` seqs stay retrievable across the
    wrap (500 slots once shared seq 65,500 and 0, keeping only 36 packets there)."""
    cache = PacketCache()
    seqs = [(start + i) & 0xFFFF for i in range(2000)]
    for n, seq in enumerate(seqs):
        cache.add(seq, seq.to_bytes(2, "big"))
        recent = seqs[max(0, n + 1 - cache.capacity) : n + 1]
        assert cache.get(recent[0]) == recent[0].to_bytes(2, "big")
    assert all(cache.get(s) is not None for s in seqs[-cache.capacity :])
    assert cache.get(seqs[-cache.capacity - 1]) is None


@pytest.mark.parametrize("capacity", [0, 500, 3, 1 << 17])
def test_capacity_must_divide_the_sequence_space(capacity):
    with pytest.raises(PacketCacheError, match="power of two"):
        PacketCache(capacity=capacity)
