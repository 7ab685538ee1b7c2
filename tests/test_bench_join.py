"""scripts/bench_join.py runs end to end on a small storm and reports what it measured."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_direct_storm_connects_everyone_and_reports_cpu_per_connect():
    argv = [sys.executable, str(ROOT / "scripts/bench_join.py"), "--viewers", "40", "--settle", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["connected"] == 40 and result["failed"] == 0
    assert result["server"]["states"] == {"connected": 40}
    assert result["server_after_leave"]["viewers"] == 0  # every leave reached the server
    assert 0 < result["cpu_ms_per_connect"] < 50
    assert result["latency_p50_s"] is not None
