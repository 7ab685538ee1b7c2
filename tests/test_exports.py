"""Exports opened back: CSV with BOM through the csv module, XLSX through openpyxl, JSON."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time

import pytest
from openpyxl import load_workbook

from server import exports
from server.attendance import AttendanceReport, derive
from server.exports import (
    ExportError,
    iso_utc,
    report_for_commune,
    to_csv,
    to_json,
    to_json_bytes,
    to_summary,
    to_xlsx,
)
from server.models import ClassSession, Event, EventKind, Site

K = EventKind
T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC = 15:00:00 in Hà Nội / Hồ Chí Minh (UTC+7)


def ev(kind: EventKind, minutes: float, site: str | None = None, **data) -> Event:
    return Event(session_id="c1", kind=kind, at=T0 + minutes * 60, site_code=site, data=data)


@pytest.fixture(name="report")
def fixture_report() -> AttendanceReport:
    sites = [
        Site("HY-01", "Nhà văn hóa thôn Đông Kỳ", "Thôn Đông Kỳ", "Xã Tiên Lữ", "Hưng Yên"),
        Site("HY-02", "Nhà văn hóa thôn Hải Triều", "Thôn Hải Triều", "Xã Tiên Lữ", "Hưng Yên"),
        Site("HY-03", "Nhà văn hóa tổ dân phố 5", "Tổ 5", "Phường Hiến Nam", "Hưng Yên"),
    ]
    events = [
        ev(K.CLASS_STARTED, 0),
        ev(K.CLASS_ENDED, 90),
        ev(K.SITE_JOINED, -20, "HY-01"),
        ev(K.SITE_LEFT, 30, "HY-01"),
        ev(K.SITE_JOINED, 31.5, "HY-01"),
        ev(K.SITE_LEFT, 91, "HY-01"),
        ev(K.HEADCOUNT, 1, "HY-01", count=45, phase="start"),
        ev(K.HEADCOUNT, 46, "HY-01", count=52, phase="mid"),
        ev(K.CHECKIN, 2, "HY-01", name="Nguyễn Văn An", by="qr"),
        ev(K.QUALITY, 10, "HY-01", **{"class": "poor"}),
        ev(K.HELP_REQUESTED, 11, "HY-01", help_id="h1", reason="no_sound"),
        ev(K.SITE_JOINED, 25, "HY-02"),
        ev(K.SITE_LEFT, 85, "HY-02"),
        ev(K.HEADCOUNT, 26, "HY-02", count=30, phase="other"),
    ]
    session = ClassSession(
        id="c1",
        title="Chuyển đổi số cho mọi người",
        starts_at=T0,
        ends_at=T0 + 5400,
        site_codes=("HY-01", "HY-02", "HY-03"),
    )
    return derive(session, sites, events, T0 + 7200)


def read_csv(data: bytes) -> list[list[str]]:
    assert data.startswith(b"\xef\xbb\xbf"), "CSV must start with a UTF-8 BOM for Excel"
    return list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline="")))


def test_sites_csv_vietnamese(report):
    rows = read_csv(to_csv(report))
    header = rows[0]
    assert header[:6] == [
        "Mã điểm cầu",
        "Tên điểm cầu",
        "Thôn/Tổ dân phố",
        "Xã/Phường",
        "Tỉnh",
        "Trạng thái",
    ]
    by_code = {row[0]: dict(zip(header, row)) for row in rows[1:]}
    assert list(by_code) == ["HY-03", "HY-01", "HY-02"]  # by commune, then code
    one = by_code["HY-01"]
    assert one["Tên điểm cầu"] == "Nhà văn hóa thôn Đông Kỳ"
    assert one["Trạng thái"] == "Có mặt trực tuyến"
    assert one["Vào lần đầu"] == "2027-01-15 14:40:00"  # 07:40 UTC shown in UTC+7
    assert one["Rời lần cuối"] == "2027-01-15 16:31:00"
    assert one["Số phút kết nối"] == "88.5"
    assert one["Số lần vào lại"] == "1"
    assert (one["Số người đầu buổi"], one["Số người giữa buổi"], one["Số người cuối buổi"]) == (
        "45",
        "52",
        "",
    )
    assert one["Số người điểm danh"] == "1"
    assert one["Số phút chất lượng kém"] == "1.0"
    assert one["Chất lượng gần nhất"] == "Kém"
    assert one["Các khoảng kết nối"] == "14:40–15:30; 15:31–16:31"
    assert by_code["HY-02"]["Trạng thái"] == "Vào muộn"
    assert by_code["HY-03"]["Trạng thái"] == "Chưa tham gia"
    assert by_code["HY-03"]["Vào lần đầu"] == ""


def test_sites_csv_english(report):
    rows = read_csv(to_csv(report, lang="en"))
    assert rows[0][:3] == ["Site code", "Site name", "Village / residential group"]
    statuses = {row[0]: row[5] for row in rows[1:]}
    assert statuses == {"HY-01": "Present online", "HY-02": "Late", "HY-03": "Never joined"}


def test_communes_csv_ends_with_the_province(report):
    rows = read_csv(to_csv(report, "communes"))
    header = rows[0]
    table = [dict(zip(header, row)) for row in rows[1:]]
    assert [r["Xã/Phường"] for r in table] == ["Phường Hiến Nam", "Xã Tiên Lữ", "Hưng Yên"]
    tien_lu = table[1]
    assert tien_lu["Số điểm cầu dự kiến"] == "2"
    assert tien_lu["Số điểm cầu đã tham gia"] == "2"
    assert tien_lu["Số người tham dự (cao nhất)"] == str(52 + 30)
    assert tien_lu["Số điểm cầu: Vào muộn"] == "1"
    assert table[2]["Số điểm cầu chưa tham gia"] == "1"


@pytest.mark.parametrize(
    ("level", "rows", "first"),
    [
        (
            "never_joined",
            1,
            ["HY-03", "Nhà văn hóa tổ dân phố 5", "Tổ 5", "Phường Hiến Nam", "Hưng Yên"],
        ),
        (
            "intervals",
            3,
            [
                "HY-01",
                "Nhà văn hóa thôn Đông Kỳ",
                "Xã Tiên Lữ",
                "2027-01-15 14:40:00",
                "2027-01-15 15:30:00",
                "50.0",
                "",
            ],
        ),
    ],
)
def test_other_csv_levels(report, level, rows, first):
    table = read_csv(to_csv(report, level))
    assert len(table) == rows + 1
    assert table[1] == first


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"level": "people"}, "unknown export level"),
        ({"lang": "fr"}, "unknown export language"),
        ({"tz": "Mars/Olympus"}, "unknown time zone"),
    ],
)
def test_bad_export_arguments(report, kwargs, message):
    with pytest.raises(ExportError, match=message):
        to_csv(report, **kwargs)


def test_xlsx_opened_back(report):
    book = load_workbook(io.BytesIO(to_xlsx(report)))
    assert book.sheetnames == [
        "Điểm cầu",
        "Xã phường",
        "Toàn tỉnh",
        "Chưa tham gia",
        "Chương trình",
    ]
    sites = book["Điểm cầu"]
    assert sites.freeze_panes == "A2"
    assert sites["A1"].font.bold and sites["A1"].value == "Mã điểm cầu"
    assert sites.column_dimensions["B"].width >= 30
    rows = list(sites.iter_rows(min_row=2, values_only=True))
    assert [r[0] for r in rows] == ["HY-03", "HY-01", "HY-02"]
    hy01 = rows[1]
    assert hy01[5] == "Có mặt trực tuyến"
    assert hy01[6] == dt.datetime(2027, 1, 15, 14, 40)  # a real date-time cell, local time
    assert sites.cell(row=3, column=7).is_date
    assert hy01[8] == pytest.approx(88.5)
    assert hy01[11] == 45 and hy01[14] == 52
    communes = book["Xã phường"]
    assert [r[0] for r in communes.iter_rows(min_row=2, values_only=True)] == [
        "Phường Hiến Nam",
        "Xã Tiên Lữ",
        "Hưng Yên",
    ]
    summary = dict(book["Toàn tỉnh"].iter_rows(min_row=2, values_only=True))
    assert summary["Buổi học"] == "Chuyển đổi số cho mọi người"
    assert summary["Bắt đầu"] == dt.datetime(2027, 1, 15, 15, 0)
    assert summary["Tình trạng"] == "Đã kết thúc"
    assert summary["Số điểm cầu chưa tham gia"] == 1
    never = list(book["Chưa tham gia"].iter_rows(values_only=True))
    assert never[1][0] == "HY-03" and len(never) == 2


def test_xlsx_english(report):
    book = load_workbook(io.BytesIO(to_xlsx(report, lang="en")))
    assert book.sheetnames == ["Sites", "Communes", "Province", "Never joined", "Programme"]
    assert book["Sites"]["F3"].value == "Present online"


def test_json_is_machine_readable(report):
    data = json.loads(to_json_bytes(report))
    assert data == to_json(report)
    assert data["window"] == {
        "start": "2027-01-15T08:00:00Z",
        "end": "2027-01-15T09:30:00Z",
        "started": True,
        "ended": True,
        "seconds": 5400.0,
    }
    assert data["never_joined"] == ["HY-03"]
    site = next(s for s in data["sites"] if s["code"] == "HY-01")
    assert site["status"] == "present"
    assert site["first_join"] == "2027-01-15T07:40:00Z"
    assert site["intervals"][1] == {
        "start": "2027-01-15T08:31:30Z",
        "end": "2027-01-15T09:31:00Z",
        "open": False,
        "seconds": 3570.0,
    }
    assert site["headcount"]["peak"] == 52
    assert "join_key" not in site
    assert data["province"]["sites_never_joined"] == 1
    assert "Nhà văn hóa".encode() in to_json_bytes(report)  # not \\u-escaped


def test_one_commune(report):
    tien_lu = report_for_commune(report, "Xã Tiên Lữ")
    assert [r.code for r in tien_lu.sites] == ["HY-01", "HY-02"]
    assert tien_lu.province.sites_expected == 2 and tien_lu.never_joined == ()
    rows = read_csv(to_csv(tien_lu, "communes"))
    assert [r[0] for r in rows[1:]] == ["Xã Tiên Lữ", "Xã Tiên Lữ"]
    with pytest.raises(ExportError, match="no site"):
        report_for_commune(report, "Xã Không Có")


@pytest.mark.parametrize(
    ("epoch", "iso"),
    [(None, None), (T0, "2027-01-15T08:00:00Z"), (T0 + 0.6, "2027-01-15T08:00:01Z")],
)
def test_iso_utc(epoch, iso):
    assert iso_utc(epoch) == iso


def test_summary_for_the_webhook(report):
    summary = to_summary(report)
    assert "sites" not in summary
    assert summary["never_joined"] == [
        {"code": "HY-03", "name": "Nhà văn hóa tổ dân phố 5", "commune": "Phường Hiến Nam"}
    ]
    assert summary["province"]["people"] == 52 + 30
    assert json.loads(json.dumps(summary)) == summary


def test_formulas_are_never_exported_as_formulas():
    site = Site("X-1", '=HYPERLINK("http://example.invalid","bấm")', commune="+Xã Lạ")
    session = ClassSession(id="c1", title="=1+2", starts_at=T0, site_codes=("X-1",))
    report = derive(session, [site], [], T0 + 60)
    rows = read_csv(to_csv(report))
    assert rows[1][1] == "'" + site.name and rows[1][3] == "'+Xã Lạ"
    book = load_workbook(io.BytesIO(to_xlsx(report)))
    cell = book["Điểm cầu"]["B2"]
    assert (cell.value, cell.data_type) == (site.name, "s")
    summary = book["Toàn tỉnh"]["B2"]
    assert (summary.value, summary.data_type) == ("=1+2", "s")


def test_timing_exports_5000_sites():
    sites = [
        Site(f"HY-{i:04d}", f"Nhà văn hóa thôn {i}", f"Thôn {i}", f"Xã {i % 104}", "Hưng Yên")
        for i in range(5000)
    ]
    events = [ev(K.CLASS_STARTED, 0), ev(K.CLASS_ENDED, 90)]
    for i, site in enumerate(sites[:4900]):
        events += [ev(K.SITE_JOINED, -5 + i % 7, site.code), ev(K.SITE_LEFT, 40, site.code)]
        events += [ev(K.SITE_JOINED, 41, site.code), ev(K.SITE_LEFT, 91, site.code)]
        events.append(ev(K.HEADCOUNT, 2, site.code, count=40 + i % 30, phase="start"))
    session = ClassSession(id="c1", title="Lớp", starts_at=T0, site_codes=())
    report = derive(session, sites, events, T0 + 7200)
    timings = {}
    for name, export in [
        ("csv", lambda: to_csv(report)),
        ("csv_communes", lambda: to_csv(report, "communes")),
        ("xlsx", lambda: to_xlsx(report)),
        ("json", lambda: to_json_bytes(report)),
    ]:
        started = time.perf_counter()
        data = export()
        timings[name] = (round((time.perf_counter() - started) * 1000), len(data))
    print(f"\nexports of 5,000 sites (ms, bytes): {timings}")
    rows = read_csv(to_csv(report))
    assert len(rows) == 5001 and rows[1][0] == "HY-0000"
    book = load_workbook(io.BytesIO(to_xlsx(report)), read_only=True)
    assert sum(1 for _ in book["Điểm cầu"].iter_rows()) == 5001
    assert len(list(book["Chưa tham gia"].iter_rows())) == 101


def test_vietnam_time_without_tzdata(report, monkeypatch):
    from server import exports

    def no_tzdata(key: str):
        raise exports.ZoneInfoNotFoundError(key)

    monkeypatch.setattr(exports, "ZoneInfo", no_tzdata)
    rows = read_csv(to_csv(report))
    assert rows[2][6] == "2027-01-15 14:40:00"  # UTC+7 all the same (no daylight saving)
    with pytest.raises(ExportError, match="unknown time zone"):
        to_csv(report, tz="Europe/Paris")


def test_one_commune_workbook(report):
    book = load_workbook(io.BytesIO(to_xlsx(report_for_commune(report, "Phường Hiến Nam"))))
    assert [r[0] for r in book["Điểm cầu"].iter_rows(min_row=2, values_only=True)] == ["HY-03"]
    summary = dict(book["Toàn tỉnh"].iter_rows(min_row=2, values_only=True))
    assert summary["Số điểm cầu dự kiến"] == 1


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+84912345678", "'+84912345678"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("Nhà văn hóa thôn Đông", "Nhà văn hóa thôn Đông"),
        ("a=1", "a=1"),
        ("", ""),
        (12, 12),
    ],
)
def test_csv_cells_a_spreadsheet_would_run_get_an_apostrophe(cell: object, written: object) -> None:
    """The rule web/static/js/csv.js copies for the moderator's links CSV."""
    assert exports.csv_text(cell) == written


@pytest.fixture(name="media_report")
def fixture_media_report() -> AttendanceReport:
    """HY-01's page sat on "connecting" all class with no media; HY-02 played."""
    attendance = {"attendance": "media"}
    events = [
        ev(K.CLASS_STARTED, 0),
        ev(K.CLASS_ENDED, 40),
        ev(K.SITE_JOINED, -1, "HY-01", conn="p1", **attendance),
        ev(K.SITE_LEFT, 41, "HY-01", conn="p1"),
        ev(K.SITE_JOINED, -1, "HY-02", conn="p2", **attendance),
        ev(K.MEDIA_UP, -0.5, "HY-02", conn="m2"),
        ev(K.MEDIA_DOWN, 40, "HY-02", conn="m2"),
        ev(K.SITE_LEFT, 41, "HY-02", conn="p2"),
    ]
    session = ClassSession(
        id="c1", title="Thử", starts_at=T0, ends_at=T0 + 2400, site_codes=("HY-01", "HY-02")
    )
    return derive(session, [Site("HY-01", "Đông"), Site("HY-02", "Tây")], events, T0 + 3600)


def test_page_open_without_media_in_every_export(media_report):
    vi = {row[0]: row for row in read_csv(to_csv(media_report))[1:]}
    en = read_csv(to_csv(media_report, lang="en"))
    header = en[0]
    by_code = {row[0]: dict(zip(header, row, strict=True)) for row in en[1:]}
    assert vi["HY-01"][5] == "Mở trang, không có hình/tiếng"
    assert by_code["HY-01"]["Status"] == "Page open, no media"
    assert by_code["HY-01"]["Connected minutes"] == "0.0"
    assert float(by_code["HY-01"]["Minutes page open"]) == pytest.approx(40)
    assert by_code["HY-01"]["Counted from"] == "Media"
    assert by_code["HY-02"]["Status"] == "Present online"
    assert float(by_code["HY-02"]["Connected minutes"]) == pytest.approx(40)
    data = to_json(media_report)
    sites = {s["code"]: s for s in data["sites"]}
    assert sites["HY-01"]["status"] == "page_only" and sites["HY-01"]["basis"] == "media"
    assert sites["HY-01"]["page_minutes"] == pytest.approx(40) and sites["HY-01"]["intervals"] == []
    assert data["province"]["status_counts"]["page_only"] == 1
    book = load_workbook(io.BytesIO(to_xlsx(media_report, lang="en")))
    cells = [row for row in book.worksheets[0].iter_rows(min_row=2, values_only=True)]
    assert "Page open, no media" in {row[5] for row in cells}
