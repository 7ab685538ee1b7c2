"""scripts/bench_sr.py runs end to end with a few viewers and reports both ways of sending SRs."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_small_run_joins_everyone_and_times_both_ways():
    argv = [
        *(sys.executable, str(ROOT / "scripts/bench_sr.py")),
        *("--viewers", "20", "--rounds", "20", "--idle-seconds", "2"),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["joined"] == {"audio": 20, "video": 20}
    assert all(v > 0 for v in result["sr_round_us"].values())
    assert set(result["idle_server_us_per_viewer_s"]) == {"off", "per_viewer", "fanout"}
    # every viewer got an SR per track per timed round, each way (and from the idle phases)
    assert result["rtcp_received_by_viewers"] >= 20 * 2 * 2 * 20
    bad = subprocess.run([*argv[:2], "--viewers", "0"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
