"""scripts/loadgen.py: links, percentiles and the final report (the simulated sites themselves
run against real nodes in tests/test_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.clusterproc import load_script

loadgen = load_script("loadgen")


def test_links_from_a_demo_json_keep_the_whep_path_only() -> None:
    demo = {
        "session_id": "c1",
        "sites": [
            {"code": "S1", "token": "t1", "whep_url": "https://lop.example.vn/whep/c1/S1"},
            {"code": "S2", "token": "t2", "whep_url": "http://10.0.0.5:8080/whep/c1/S2"},
        ],
    }
    links = loadgen.links_from_json(demo)
    assert [(x.sid, x.code, x.token, x.whep_path) for x in links] == [
        ("c1", "S1", "t1", "/whep/c1/S1"),
        ("c1", "S2", "t2", "/whep/c1/S2"),
    ]


@pytest.mark.parametrize(
    "values, p, expected",
    [([], 50, None), ([3.0], 99, 3.0), ([4, 1, 3, 2, 5], 50, 3), ([1, 2, 3, 4, 5], 100, 5)],
)
def test_percentile(values: list[float], p: float, expected: float | None) -> None:
    assert loadgen.percentile(values, p) == expected


def report(code: str, node: str, packets: int, lost: int, joins: list[float], **extra: Any) -> dict:
    body = {
        "code": code,
        "state": "playing",
        "node": node,
        "joins": len(joins),
        "join_latency_s": joins,
        "packets": packets,
        "lost": lost,
        "reconnects": 0,
        "playing": True,
        "errors": [],
    }
    return {**body, **extra}


def test_final_report_counts_sites_nodes_and_loss() -> None:
    reports = [
        report("S1", "edge1", 900, 100, [0.2]),
        report("S2", "edge2", 1000, 0, [0.4, 0.1], reconnects=1),
        report("S3", "edge2", 0, 0, [], playing=False),
    ]
    result = loadgen.final_report(reports, 10.0)
    assert result["sites"] == 3 and result["playing"] == 2 and result["joined"] == 2
    assert result["join_ms_p50"] in (200.0, 400.0) and result["join_ms_p99"] == 400.0
    assert result["loss_pct_max"] == 10.0 and result["packets_per_site_min"] == 0
    assert result["sites_per_node"] == {"edge1": 1, "edge2": 2}
    assert result["reconnects"] == 1 and len(result["per_site"]) == 3
