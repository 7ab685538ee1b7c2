"""scripts/bench_cluster.py's measuring parts: kernel receive stamps, the hop split by a
packet's place in its frame, run-queue waits, the --edges option."""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import socket
import struct
import sys
import time
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "lopso_bench_cluster_test", ROOT / "scripts" / "bench_cluster.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def rtp(seq: int, stamp: int, payload: bytes, pt: int = 96) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, stamp, 1234) + payload


def test_kernel_stamp_is_when_the_datagram_arrived_not_when_it_was_read(bench: Any) -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        receiver.bind(("127.0.0.1", 0))
        bench.kernel_stamp(receiver)  # turns stamping on (the kernel does it a moment later:
        time.sleep(0.05)  # a datagram before that is stamped when the stamp is asked for)
        sent = time.time()
        sender.sendto(b"x", receiver.getsockname())
        time.sleep(0.2)
        read = time.time()
        receiver.recv(16)
        stamp = bench.kernel_stamp(receiver)
        assert stamp is not None
        assert sent - 0.001 <= stamp <= read - 0.19  # the arrival, not the read 200 ms later
    finally:
        receiver.close()
        sender.close()


def test_hop_probe_splits_first_and_later_packets_of_a_frame(bench: Any) -> None:
    probe = bench.HopProbe()
    sinks = {name: probe.sink(name) for name in ("origin", "origin2", "edge")}
    for frame in range(5):
        for place in range(4):  # each packet ahead in the frame adds 1 ms at the edge
            data = rtp(100 + 4 * frame + place, 9000 * frame, bytes([frame, place]) * 40)
            sinks["origin"](data)
            sinks["origin2"](data)
            sinks["edge"](data)
    # without sockets there are no kernel stamps: loop times only; then known hops
    assert len(probe.loop_hops) == 20 and probe.hops == []
    now = 1000.0
    for frame in range(5):
        for place in range(4):
            seq, hop = 100 + 4 * frame + place, 0.0005 + 0.001 * place
            seen = {
                "origin": bench.Arrival(now, now, seq, 9000 * frame),
                "origin2": bench.Arrival(now, now, seq, 9000 * frame),
                "edge": bench.Arrival(now + hop, now + hop, seq + 7, 3000 * frame),
            }
            probe._record(seen)
    assert len(probe.hops) == 20
    place = probe.by_place_in_frame()
    assert place["first"] == pytest.approx([0.0005] * 5)
    assert len(place["later"]) == 15
    assert place["slope"][0] == pytest.approx(0.001)


def test_hop_probe_ignores_audio(bench: Any) -> None:
    probe = bench.HopProbe()
    for name in ("origin", "origin2", "edge"):
        probe.sink(name)(rtp(1, 1, b"opus" * 20, pt=111))
    assert probe.loop_hops == [] and probe.arrivals == {}


def test_run_queue_of_this_process_and_its_waits(bench: Any) -> None:
    before = bench.run_queue(os.getpid())
    sum(range(200_000))
    time.sleep(0.01)
    after = bench.run_queue(os.getpid())
    assert after[1] > before[1] and after[0] >= before[0]
    waits = bench.waits((0.0, 0), (0.5, 100), elapsed=10.0)
    assert waits == {"ms_per_s": 50.0, "ms_per_wakeup": 5.0}


def test_edge_counts_option(bench: Any) -> None:
    assert bench.edge_counts("1") == [1]
    assert bench.edge_counts("1,2") == [1, 2]
    with pytest.raises(argparse.ArgumentTypeError):
        bench.edge_counts("0")
