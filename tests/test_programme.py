"""The programme of a class with two presenters: segments from the ledger, halls per segment,
and the report's exports (JSON, CSV level `programme`, an XLSX sheet)."""

from __future__ import annotations

import csv
import io

import pytest
from openpyxl import load_workbook

from server.attendance import derive
from server.exports import report_for_commune, to_csv, to_json, to_xlsx
from server.models import ClassSession, Event, EventKind, Presenter, Site
from server.programme import segments

K = EventKind
T0 = 1_800_000_000.0  # 15:00:00 in Hà Nội
LINEUP = (
    Presenter("hocvien", "TS. Nguyễn Văn An", "Học viện Chính trị khu vực I"),
    Presenter("congan", "Đại úy Trần Thị Bình", "Công an tỉnh Hưng Yên"),
)
SESSION = ClassSession("c1", "Hai báo cáo viên", T0, T0 + 5400, presenters=LINEUP)


def ev(kind: EventKind, minutes: float, site: str | None = None, seq: int = 0, **data) -> Event:
    return Event("c1", kind, T0 + minutes * 60, site, data, seq=seq)


PROGRAMME = [
    ev(K.CLASS_STARTED, 0),
    ev(K.ON_AIR, 0, presenter="hocvien"),
    ev(K.ON_AIR, 40, presenter="congan"),
    ev(K.OFF_AIR, 70, presenter="congan"),  # B's connection dropped ...
    ev(K.ON_AIR, 71, presenter="hocvien"),  # ... the director cut back to A
    ev(K.CLASS_ENDED, 90),
]


def test_segments_follow_the_cuts_and_close_at_the_end() -> None:
    spells = segments(SESSION, reversed(PROGRAMME), T0 + 99 * 60)
    assert [(s.presenter, (s.start - T0) / 60, (s.end - T0) / 60) for s in spells] == [
        ("hocvien", 0, 40),
        ("congan", 40, 70),
        ("hocvien", 71, 90),
    ]
    assert spells[1].name == "Đại úy Trần Thị Bình" and not any(s.open for s in spells)
    live = segments(SESSION, PROGRAMME[:3], T0 + 50 * 60)  # before the end: B still on air
    assert live[-1].open and live[-1].end == T0 + 50 * 60


@pytest.fixture(name="report")
def fixture_report():
    sites = [
        Site("HY-01", "Nhà văn hóa thôn Đông", "Thôn Đông", "Xã Tiên Lữ", "Hưng Yên"),
        Site("HY-02", "Nhà văn hóa thôn Bắc", "Thôn Bắc", "Xã Tiên Lữ", "Hưng Yên"),
        Site("HY-03", "Nhà văn hóa tổ 5", "Tổ 5", "Phường Hiến Nam", "Hưng Yên"),
    ]
    halls = [  # media flowing: HY-01 all along, HY-02 only during A's first spell, HY-03 never
        ev(K.MEDIA_UP, -5, "HY-01", conn="a"),
        ev(K.MEDIA_DOWN, 95, "HY-01", conn="a"),
        ev(K.MEDIA_UP, 10, "HY-02", conn="b"),
        ev(K.MEDIA_DOWN, 30, "HY-02", conn="b"),
    ]
    return derive(SESSION, sites, PROGRAMME + halls, T0 + 7200)


def test_each_segment_counts_the_halls_that_watched_it(report) -> None:
    assert [(p.presenter, p.halls, round(p.hall_minutes)) for p in report.programme] == [
        ("hocvien", 2, 60),  # HY-01 40 min + HY-02 20 min
        ("congan", 1, 30),
        ("hocvien", 1, 19),
    ]
    tien_lu = report_for_commune(report, "Xã Tiên Lữ")
    assert [p.halls for p in tien_lu.programme] == [2, 1, 1]
    hien_nam = report_for_commune(report, "Phường Hiến Nam")
    assert [p.halls for p in hien_nam.programme] == [0, 0, 0]


def test_the_exports_show_the_programme(report) -> None:
    body = to_json(report)["programme"]
    assert [(p["presenter"], p["start"], p["end"]) for p in body] == [
        ("hocvien", "2027-01-15T08:00:00Z", "2027-01-15T08:40:00Z"),
        ("congan", "2027-01-15T08:40:00Z", "2027-01-15T09:10:00Z"),
        ("hocvien", "2027-01-15T09:11:00Z", "2027-01-15T09:30:00Z"),
    ]
    rows = list(csv.reader(io.StringIO(to_csv(report, "programme").decode("utf-8-sig"))))
    assert rows[0][:5] == ["Mã báo cáo viên", "Báo cáo viên", "Đơn vị", "Lên sóng lúc", "Đến"]
    assert rows[2][1:5] == [
        "Đại úy Trần Thị Bình",
        "Công an tỉnh Hưng Yên",
        "2027-01-15 15:40:00",
        "2027-01-15 16:10:00",
    ]
    assert rows[2][7] == "1" and len(rows) == 4
    book = load_workbook(io.BytesIO(to_xlsx(report, "en")))
    sheet = book["Programme"]
    values = [[c.value for c in row] for row in sheet.iter_rows()]
    assert values[0][1] == "Presenter" and values[1][1] == "TS. Nguyễn Văn An"
    assert [v[0] for v in values[1:]] == ["hocvien", "congan", "hocvien"]


def test_a_class_never_on_air_has_an_empty_programme() -> None:
    report = derive(SESSION, [], [ev(K.CLASS_STARTED, 0)], T0 + 60)
    assert report.programme == () and to_json(report)["programme"] == []
