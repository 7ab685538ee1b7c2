"""Attendance exports: CSV (UTF-8 with BOM, for Excel), XLSX and JSON.

Pure: takes an ``AttendanceReport`` (server.attendance) and returns bytes or a dict; imports
neither aiohttp, aiortc nor redis. Headers are Vietnamese by default (``lang="en"`` for English).

- CSV: one table per call, ``level`` = ``"sites"`` (one row per site), ``"communes"`` (one row
  per commune, then a province row), ``"never_joined"``, ``"intervals"`` (one row per
  connected interval) or ``"programme"`` (one row per presenter's spell on air, with the halls
  that watched it). The header row is the first row; times are local
  (Asia/Ho_Chi_Minh, ``YYYY-MM-DD HH:MM:SS``); numbers use a dot.
- XLSX: sheets for the sites, the communes, the province summary, the sites that never
  joined and the programme; bold, frozen header rows, column widths, times as Excel date-times in local time.
  (Each connected interval is in the sites sheet as text; one row per interval is the CSV
  ``intervals`` level: 50,000 more rows would make the workbook several times slower.)
  Building it is CPU-bound (~1 s for 5,000 sites with lxml installed, ~3 s without): call it
  off the event loop (``asyncio.to_thread``); everything here is thread-safe.
- JSON: everything, machine-readable, times as ISO 8601 UTC (``2026-11-26T02:00:00Z``).

To export one commune only, derive the report, then ``report_for_commune(report, name)``.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from server.attendance import AttendanceReport, Rollup, SiteRecord, Status, rollup, status_label
from server.programme import Segment, with_halls
from server.quality import quality_label

DEFAULT_TZ = "Asia/Ho_Chi_Minh"
LEVELS = ("sites", "communes", "never_joined", "intervals", "programme")
_UTC7 = dt.timezone(dt.timedelta(hours=7), "ICT")  # Vietnam keeps no daylight saving time


class ExportError(ValueError):
    """An export was asked with an unknown level, language or time zone."""


@dataclasses.dataclass(frozen=True, slots=True)
class Column:
    """One exported column: headers in both languages, a getter, and how to show it."""

    key: str
    vi: str
    en: str
    get: Callable[[Any, str], Any]  # (row object, lang) -> value
    kind: str = "text"  # text | int | float | time
    width: int = 14


def _c(
    key: str, vi: str, en: str, get: Callable[[Any, str], Any], kind: str = "text", width: int = 14
) -> Column:
    return Column(key, vi, en, get, kind, width)


SITE_COLUMNS: tuple[Column, ...] = (
    _c("code", "Mã điểm cầu", "Site code", lambda r, _: r.site.code, width=14),
    _c("name", "Tên điểm cầu", "Site name", lambda r, _: r.site.name, width=34),
    _c(
        "village",
        "Thôn/Tổ dân phố",
        "Village / residential group",
        lambda r, _: r.site.village,
        width=22,
    ),
    _c("commune", "Xã/Phường", "Commune", lambda r, _: r.site.commune, width=22),
    _c("province", "Tỉnh", "Province", lambda r, _: r.site.province, width=14),
    _c("status", "Trạng thái", "Status", lambda r, lang: status_label(r.status, lang), width=20),
    _c("first_join", "Vào lần đầu", "First join", lambda r, _: r.first_join, "time", 20),
    _c("last_leave", "Rời lần cuối", "Last leave", lambda r, _: r.last_leave, "time", 20),
    _c(
        "connected_minutes",
        "Số phút kết nối",
        "Connected minutes",
        lambda r, _: r.connected_minutes,
        "float",
    ),
    _c(
        "connected_pct",
        "% thời lượng buổi học",
        "% of the lecture",
        lambda r, _: r.connected_pct,
        "float",
    ),
    _c("rejoins", "Số lần vào lại", "Rejoins", lambda r, _: r.rejoins, "int"),
    _c(
        "headcount_start",
        "Số người đầu buổi",
        "Headcount at start",
        lambda r, _: r.headcount_start,
        "int",
    ),
    _c(
        "headcount_mid",
        "Số người giữa buổi",
        "Headcount at mid",
        lambda r, _: r.headcount_mid,
        "int",
    ),
    _c(
        "headcount_end",
        "Số người cuối buổi",
        "Headcount at end",
        lambda r, _: r.headcount_end,
        "int",
    ),
    _c(
        "headcount_peak",
        "Số người cao nhất",
        "Peak headcount",
        lambda r, _: r.headcount_peak,
        "int",
    ),
    _c(
        "headcount_latest",
        "Số người báo gần nhất",
        "Latest headcount",
        lambda r, _: r.headcount_latest,
        "int",
    ),
    _c("checkins", "Số người điểm danh", "Check-ins", lambda r, _: r.checkins, "int"),
    _c(
        "poor_minutes",
        "Số phút chất lượng kém",
        "Minutes in poor quality",
        lambda r, _: r.poor_s / 60,
        "float",
    ),
    _c(
        "last_quality",
        "Chất lượng gần nhất",
        "Latest quality",
        lambda r, lang: quality_label(r.last_quality, lang),
        width=16,
    ),
    _c("help_requests", "Yêu cầu hỗ trợ", "Help requests", lambda r, _: r.help_requests, "int"),
    _c("help_open", "Hỗ trợ chưa xử lý", "Help still open", lambda r, _: r.help_open, "int"),
    _c("questions", "Câu hỏi", "Questions", lambda r, _: r.questions, "int"),
    _c(
        "page_minutes",
        "Số phút mở trang",
        "Minutes page open",
        lambda r, _: r.page_s / 60,
        "float",
    ),
    _c(
        "replay_minutes",
        "Số phút xem lại",
        "Replay minutes",
        lambda r, _: r.replay_s / 60,
        "float",
    ),
    _c("basis", "Tính theo", "Counted from", lambda r, lang: basis_label(r.basis, lang), width=16),
    _c(
        "intervals",
        "Các khoảng kết nối",
        "Connected intervals",
        lambda r, _: r.intervals,
        "spans",
        40,
    ),
)


BASIS_LABELS = {
    "vi": {"media": "Hình/tiếng", "page": "Trang (dữ liệu cũ)"},
    "en": {"media": "Media", "page": "Page (old ledger)"},
}


def basis_label(basis: str, lang: str) -> str:
    """What a site's connected time is counted from: its media, or (old ledgers) its page."""
    return BASIS_LABELS.get(lang, BASIS_LABELS["en"]).get(basis, basis)


def _status_count(status: str) -> Callable[[Rollup, str], int]:
    """Getter of one status's count in a roll-up."""
    return lambda rollup_, _lang: rollup_.status_counts.get(status, 0)


COMMUNE_COLUMNS: tuple[Column, ...] = (
    _c("commune", "Xã/Phường", "Commune", lambda c, _: c.name, width=26),
    _c(
        "sites_expected",
        "Số điểm cầu dự kiến",
        "Sites expected",
        lambda c, _: c.sites_expected,
        "int",
    ),
    _c(
        "sites_joined",
        "Số điểm cầu đã tham gia",
        "Sites joined",
        lambda c, _: c.sites_joined,
        "int",
    ),
    _c(
        "sites_never_joined",
        "Số điểm cầu chưa tham gia",
        "Sites never joined",
        lambda c, _: c.sites_never_joined,
        "int",
    ),
    *(
        _c(
            f"status_{s.value}",
            f"Số điểm cầu: {status_label(s, 'vi')}",
            f"Sites: {status_label(s, 'en')}",
            _status_count(s.value),
            "int",
        )
        for s in (Status.PRESENT, Status.LATE, Status.LEFT_EARLY, Status.ABSENT, Status.REPLAY)
    ),
    _c("people", "Số người tham dự (cao nhất)", "People (peak)", lambda c, _: c.people, "int"),
    _c(
        "people_latest",
        "Số người báo gần nhất",
        "People (latest)",
        lambda c, _: c.people_latest,
        "int",
    ),
    _c("checkins", "Số người điểm danh", "Check-ins", lambda c, _: c.checkins, "int"),
    _c(
        "connected_minutes",
        "Tổng số phút kết nối",
        "Connected minutes",
        lambda c, _: c.connected_minutes,
        "float",
    ),
    _c(
        "poor_minutes",
        "Số phút chất lượng kém",
        "Minutes in poor quality",
        lambda c, _: c.poor_minutes,
        "float",
    ),
    _c(
        "replay_minutes",
        "Tổng số phút xem lại",
        "Replay minutes",
        lambda c, _: c.replay_minutes,
        "float",
    ),
    _c("help_requests", "Yêu cầu hỗ trợ", "Help requests", lambda c, _: c.help_requests, "int"),
    _c("help_open", "Hỗ trợ chưa xử lý", "Help still open", lambda c, _: c.help_open, "int"),
    _c("questions", "Câu hỏi", "Questions", lambda c, _: c.questions, "int"),
)

NEVER_JOINED_COLUMNS: tuple[Column, ...] = SITE_COLUMNS[:5]

INTERVAL_COLUMNS: tuple[Column, ...] = (
    _c("code", "Mã điểm cầu", "Site code", lambda t, _: t[0].site.code),
    _c("name", "Tên điểm cầu", "Site name", lambda t, _: t[0].site.name, width=34),
    _c("commune", "Xã/Phường", "Commune", lambda t, _: t[0].site.commune, width=22),
    _c("start", "Bắt đầu kết nối", "Connected from", lambda t, _: t[1].start, "time", 20),
    _c("end", "Kết thúc kết nối", "Connected until", lambda t, _: t[1].end, "time", 20),
    _c("minutes", "Số phút", "Minutes", lambda t, _: t[1].seconds / 60, "float"),
    _c("open", "Chưa rời", "Still connected", lambda t, lang: _yes_no(t[1].open, lang), width=10),
)


PROGRAMME_COLUMNS: tuple[Column, ...] = (
    _c("presenter", "Mã báo cáo viên", "Presenter id", lambda p, _: p.presenter, width=14),
    _c("name", "Báo cáo viên", "Presenter", lambda p, _: p.name, width=30),
    _c("organisation", "Đơn vị", "Organisation", lambda p, _: p.organisation, width=30),
    _c("start", "Lên sóng lúc", "On air from", lambda p, _: p.start, "time", 20),
    _c("end", "Đến", "Until", lambda p, _: p.end, "time", 20),
    _c("minutes", "Số phút", "Minutes", lambda p, _: p.seconds / 60, "float"),
    _c("open", "Đang lên sóng", "Still on air", lambda p, lang: _yes_no(p.open, lang), width=12),
    _c("halls", "Số điểm cầu xem", "Halls watching", lambda p, _: p.halls, "int"),
    _c(
        "hall_minutes",
        "Tổng số phút xem của các điểm cầu",
        "Hall minutes watched",
        lambda p, _: p.hall_minutes,
        "float",
    ),
)


def _yes_no(value: bool, lang: str) -> str:
    return ("Có" if value else "") if lang == "vi" else ("yes" if value else "")


def _check(lang: str, tz: str) -> dt.tzinfo:
    """Validate the language and return the time zone (UTC+7 when tzdata is missing)."""
    if lang not in ("vi", "en"):
        raise ExportError(f"unknown export language {lang!r}; use 'vi' or 'en'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        if tz == DEFAULT_TZ:
            return _UTC7
        raise ExportError(f"unknown time zone {tz!r}") from exc


def _table(report: AttendanceReport, level: str) -> tuple[tuple[Column, ...], list[Any]]:
    """The columns and row objects of one export level."""
    if level == "sites":
        return SITE_COLUMNS, list(report.sites)
    if level == "communes":
        return COMMUNE_COLUMNS, [*report.communes, report.province]
    if level == "never_joined":
        return NEVER_JOINED_COLUMNS, list(report.never_joined)
    if level == "intervals":
        return INTERVAL_COLUMNS, [(r, i) for r in report.sites for i in r.intervals]
    if level == "programme":
        return PROGRAMME_COLUMNS, list(report.programme)
    raise ExportError(f"unknown export level {level!r}; use one of {', '.join(LEVELS)}")


def local_time(epoch: float | None, tz: dt.tzinfo) -> dt.datetime | None:
    """A UTC epoch as a naive local date-time (whole seconds), None stays None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(round(epoch), tz).replace(tzinfo=None)


def iso_utc(epoch: float | None) -> str | None:
    """A UTC epoch as ISO 8601 with a Z (whole seconds), None stays None."""
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(round(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def spans_text(intervals: Sequence[Any], tz: dt.tzinfo) -> str:
    """Connected intervals as local "HH:MM-HH:MM; ..." text."""
    return "; ".join(
        f"{local_time(i.start, tz):%H:%M}–{local_time(i.end, tz):%H:%M}" for i in intervals
    )


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(value: Any) -> Any:
    """Text that Excel would run as a formula gets a leading apostrophe (CSV injection)."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def _csv_value(value: Any, kind: str, tz: dt.tzinfo) -> Any:
    if value is None:
        return ""
    if kind == "text":
        return csv_text(value)
    if kind == "spans":
        return spans_text(value, tz)
    if kind == "time":
        return local_time(value, tz).strftime("%Y-%m-%d %H:%M:%S")  # type: ignore[union-attr]
    if kind == "float":
        return f"{value:.1f}"
    return value


def to_csv(
    report: AttendanceReport, level: str = "sites", lang: str = "vi", tz: str = DEFAULT_TZ
) -> bytes:
    """One table of the report as CSV: UTF-8 with BOM, header row first, CRLF line ends."""
    zone = _check(lang, tz)
    columns, rows = _table(report, level)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([getattr(c, lang) for c in columns])
    for row in rows:
        writer.writerow([_csv_value(c.get(row, lang), c.kind, zone) for c in columns])
    return out.getvalue().encode("utf-8-sig")


# --- XLSX ---------------------------------------------------------------------------------------

_SHEETS = {
    "sites": ("Điểm cầu", "Sites"),
    "communes": ("Xã phường", "Communes"),
    "province": ("Toàn tỉnh", "Province"),
    "never_joined": ("Chưa tham gia", "Never joined"),
    "programme": ("Chương trình", "Programme"),
}
_NUMBER_FORMATS = {"time": "yyyy-mm-dd hh:mm:ss", "float": "0.0", "int": "0"}


def to_xlsx(report: AttendanceReport, lang: str = "vi", tz: str = DEFAULT_TZ) -> bytes:
    """The whole report as an XLSX workbook (see the module docstring for its sheets)."""
    from openpyxl import Workbook  # openpyxl is slow to import; only exports need it

    zone = _check(lang, tz)
    book = Workbook(write_only=True)
    index = 0 if lang == "vi" else 1
    for level in ("sites", "communes"):
        columns, rows = _table(report, level)
        _write_table(book, _SHEETS[level][index], columns, rows, lang, zone)
    _write_summary(book, _SHEETS["province"][index], report, lang, zone)
    for level in ("never_joined", "programme"):
        columns, rows = _table(report, level)
        _write_table(book, _SHEETS[level][index], columns, rows, lang, zone)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def _header_cells(sheet: Any, titles: Sequence[str]) -> list[Any]:
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.styles import Alignment, Font

    cells = []
    for title in titles:
        cell = WriteOnlyCell(sheet, value=title)
        cell.font = Font(bold=True)
        cell.alignment = Alignment(wrap_text=True, vertical="top")
        cells.append(cell)
    return cells


def _write_table(
    book: Any, title: str, columns: Sequence[Column], rows: list[Any], lang: str, zone: dt.tzinfo
) -> None:
    from openpyxl.utils import get_column_letter

    sheet = book.create_sheet(title)
    sheet.freeze_panes = "A2"
    for n, column in enumerate(columns, start=1):
        sheet.column_dimensions[get_column_letter(n)].width = column.width
    sheet.append(_header_cells(sheet, [getattr(c, lang) for c in columns]))
    getters = [(c.get, c.kind) for c in columns]
    for row in rows:  # plain values: styled cells cost ~100x more (datetimes get a date format)
        values = [_xlsx_value(get(row, lang), kind, zone) for get, kind in getters]
        sheet.append([_xlsx_text(sheet, v) for v in values])


def _xlsx_text(sheet: Any, value: Any) -> Any:
    """A string openpyxl would store as a formula ("=...") as a cell holding plain text."""
    if isinstance(value, str) and value.startswith("="):
        from openpyxl.cell import WriteOnlyCell

        cell = WriteOnlyCell(sheet, value=value)
        cell.data_type = "s"
        return cell
    return value


def _xlsx_value(value: Any, kind: str, zone: dt.tzinfo) -> Any:
    if value is None:
        return None
    if kind == "time":
        return local_time(value, zone)
    if kind == "float":
        return round(value, 1)
    if kind == "spans":
        return spans_text(value, zone)
    return value


def _summary_rows(report: AttendanceReport, lang: str, zone: dt.tzinfo) -> list[tuple[str, Any]]:
    """(label, value) rows of the province summary sheet."""
    vi = lang == "vi"
    w, p, s = report.window, report.province, report.session
    state = (
        ("Đã kết thúc" if vi else "Ended") if w.ended else ("Đang diễn ra" if vi else "Going on")
    )
    rows: list[tuple[str, Any]] = [
        ("Buổi học" if vi else "Class", s.title),
        ("Mã buổi học" if vi else "Class id", s.id),
        ("Tỉnh" if vi else "Province", p.name),
        ("Bắt đầu" if vi else "Lecture start", local_time(w.start, zone)),
        ("Kết thúc" if vi else "Lecture end", local_time(w.end, zone)),
        ("Tình trạng" if vi else "State", state),
        ("Số liệu lúc" if vi else "Report time", local_time(report.generated_at, zone)),
        ("Múi giờ" if vi else "Time zone", str(zone)),
    ]
    for column in COMMUNE_COLUMNS[1:]:
        rows.append((getattr(column, lang), column.get(p, lang)))
    return rows


def _write_summary(
    book: Any, title: str, report: AttendanceReport, lang: str, zone: dt.tzinfo
) -> None:
    from openpyxl.cell import WriteOnlyCell

    sheet = book.create_sheet(title)
    sheet.freeze_panes = "A2"
    sheet.column_dimensions["A"].width = 34
    sheet.column_dimensions["B"].width = 30
    sheet.append(
        _header_cells(
            sheet, ["Chỉ tiêu" if lang == "vi" else "Item", "Giá trị" if lang == "vi" else "Value"]
        )
    )
    for label, value in _summary_rows(report, lang, zone):
        cell = WriteOnlyCell(sheet, value=value)
        if isinstance(value, str):
            cell.data_type = "s"  # a title starting with "=" is text, not a formula
        if isinstance(value, dt.datetime):
            cell.number_format = _NUMBER_FORMATS["time"]
        elif isinstance(value, float):
            cell.number_format = _NUMBER_FORMATS["float"]
        sheet.append([label, cell])


# --- JSON ---------------------------------------------------------------------------------------


def _rollup_dict(r: Rollup) -> dict[str, Any]:
    data = dataclasses.asdict(r)
    data["status_counts"] = dict(r.status_counts)
    data["connected_minutes"] = round(r.connected_minutes, 2)
    data["poor_minutes"] = round(r.poor_minutes, 2)
    data["replay_minutes"] = round(r.replay_minutes, 2)
    return data


def site_dict(r: SiteRecord) -> dict[str, Any]:
    """One site record as JSON-ready data (times ISO UTC; no join key)."""
    site = r.site
    return {
        "code": site.code,
        "name": site.name,
        "village": site.village,
        "commune": site.commune,
        "province": site.province,
        "expected": r.expected,
        "status": r.status.value,
        "late": r.late,
        "left_early": r.left_early,
        "connected_now": r.connected_now,
        "first_join": iso_utc(r.first_join),
        "last_leave": iso_utc(r.last_leave),
        "intervals": [
            {
                "start": iso_utc(i.start),
                "end": iso_utc(i.end),
                "open": i.open,
                "seconds": round(i.seconds, 3),
            }
            for i in r.intervals
        ],
        "rejoins": r.rejoins,
        "connected_seconds": round(r.connected_s, 3),
        "connected_minutes": round(r.connected_minutes, 2),
        "connected_pct": round(r.connected_pct, 2),
        "online_seconds": round(r.online_s, 3),
        "basis": r.basis,
        "page_open_now": r.page_open_now,
        "page_intervals": [
            {"start": iso_utc(i.start), "end": iso_utc(i.end), "open": i.open}
            for i in r.page_intervals
        ],
        "page_seconds": round(r.page_s, 3),
        "page_minutes": round(r.page_s / 60, 2),
        "page_pct": round(r.page_pct, 2),
        "replay_seconds": round(r.replay_s, 1),
        "replay_minutes": round(r.replay_s / 60, 2),
        "headcount": {
            "start": r.headcount_start,
            "mid": r.headcount_mid,
            "end": r.headcount_end,
            "latest": r.headcount_latest,
            "peak": r.headcount_peak,
            "reports": r.headcount_reports,
        },
        "people": r.people,
        "checkins": r.checkins,
        "checkins_by_operator": r.checkins_by_operator,
        "quality_seconds": {k: round(v, 3) for k, v in r.quality_s.items()},
        "poor_seconds": round(r.poor_s, 3),
        "last_quality": r.last_quality,
        "help_requests": r.help_requests,
        "help_open": r.help_open,
        "help_resolved": r.help_resolved,
        "questions": r.questions,
    }


def to_json(report: AttendanceReport) -> dict[str, Any]:
    """The whole report as JSON-ready data: class, window, rules, province, communes, sites."""
    s, w = report.session, report.window
    return {
        "session": {
            "id": s.id,
            "title": s.title,
            "planned_start": iso_utc(s.starts_at),
            "planned_end": iso_utc(s.ends_at),
            "video_codec": s.video_codec,
        },
        "generated_at": iso_utc(report.generated_at),
        "window": {
            "start": iso_utc(w.start),
            "end": iso_utc(w.end),
            "started": w.started,
            "ended": w.ended,
            "seconds": round(w.seconds, 3),
        },
        "rules": dataclasses.asdict(report.rules),
        "people_rule": "sum over sites of max(peak headcount, check-ins)",
        "province": _rollup_dict(report.province),
        "communes": [_rollup_dict(c) for c in report.communes],
        "sites": [site_dict(r) for r in report.sites],
        "never_joined": [r.site.code for r in report.never_joined],
        "programme": [programme_dict(p) for p in report.programme],
    }


def programme_dict(segment: Segment) -> dict[str, Any]:
    """One presenter's spell on air as JSON-ready data (times ISO UTC)."""
    return {
        "presenter": segment.presenter,
        "name": segment.name,
        "organisation": segment.organisation,
        "start": iso_utc(segment.start),
        "end": iso_utc(segment.end),
        "open": segment.open,
        "seconds": round(segment.seconds, 3),
        "halls": segment.halls,
        "hall_minutes": round(segment.hall_minutes, 2),
    }


def to_summary(report: AttendanceReport) -> dict[str, Any]:
    """The class's totals without per-site records: for the end-of-class webhook."""
    full = to_json(report)
    del full["sites"]
    full["never_joined"] = [
        {"code": r.site.code, "name": r.site.name, "commune": r.site.commune}
        for r in report.never_joined
    ]
    return full


def to_json_bytes(report: AttendanceReport) -> bytes:
    """``to_json`` encoded as UTF-8 (Vietnamese kept readable, not escaped)."""
    return json.dumps(to_json(report), ensure_ascii=False).encode("utf-8")


# --- one commune ------------------------------------------------------------------------------


def report_for_commune(report: AttendanceReport, commune: str) -> AttendanceReport:
    """The report narrowed to one commune's sites (its roll-up stands as the 'province')."""
    sites = tuple(r for r in report.sites if r.site.commune == commune)
    if not sites:
        raise ExportError(f"no site of the class is in commune {commune!r}")
    summary: Mapping[str, Rollup] = {c.name: c for c in report.communes}
    return dataclasses.replace(
        report,
        sites=sites,
        communes=(summary.get(commune) or rollup(commune, sites),),
        province=rollup(commune, sites),
        never_joined=tuple(r for r in report.never_joined if r.site.commune == commune),
        programme=tuple(with_halls(report.programme, (r.intervals for r in sites))),
    )


def report_for_communes(report: AttendanceReport, communes: Iterable[str]) -> AttendanceReport:
    """The report narrowed to some communes' sites (a commune moderator's): one commune as
    `report_for_commune`; several keep their roll-ups, the 'province' totals them."""
    wanted = sorted(set(communes))
    if len(wanted) == 1:
        return report_for_commune(report, wanted[0])
    sites = tuple(r for r in report.sites if r.site.commune in wanted)
    if not sites:
        raise ExportError(f"no site of the class is in communes {', '.join(wanted)}")
    return dataclasses.replace(
        report,
        sites=sites,
        communes=tuple(c for c in report.communes if c.name in wanted),
        province=rollup(" · ".join(wanted), sites),
        never_joined=tuple(r for r in report.never_joined if r.site.commune in wanted),
    )


__all__ = [
    "COMMUNE_COLUMNS",
    "DEFAULT_TZ",
    "LEVELS",
    "SITE_COLUMNS",
    "ExportError",
    "iso_utc",
    "local_time",
    "report_for_commune",
    "report_for_communes",
    "site_dict",
    "to_csv",
    "to_json",
    "to_json_bytes",
    "to_summary",
    "to_xlsx",
]
