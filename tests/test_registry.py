"""Registry CSV import: Vietnamese UTF-8, BOM, header order, bad rows with line numbers."""

from __future__ import annotations

import pytest

from server.registry import SiteImportError, decode_csv, parse_sites

GOOD = (
    "code,name,village,commune,province\n"
    "HY-TL-001,Nhà văn hóa thôn Đông,Thôn Đông,Xã Tiên Lữ,Hưng Yên\n"
    'HY-HN-002,"Nhà văn hóa tổ dân phố 3, Hiến Nam",Tổ 3,Phường Hiến Nam,Hưng Yên\n'
)


def keys():
    counter = iter(range(1000))
    return lambda: f"k{next(counter)}"


def test_vietnamese_rows_parse_exactly() -> None:
    sites = parse_sites(GOOD, new_key=keys())
    assert [s.code for s in sites] == ["HY-TL-001", "HY-HN-002"]
    assert sites[0].name == "Nhà văn hóa thôn Đông" and sites[0].commune == "Xã Tiên Lữ"
    assert sites[1].name == "Nhà văn hóa tổ dân phố 3, Hiến Nam"
    assert [s.join_key for s in sites] == ["k0", "k1"]


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_bom_and_crlf_from_excel(encoding: str) -> None:
    data = GOOD.replace("\n", "\r\n").encode(encoding)
    sites = parse_sites(decode_csv(data), new_key=keys())
    assert sites[0].code == "HY-TL-001" and sites[1].province == "Hưng Yên"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig"])
def test_semicolons_from_excel_in_vietnamese_settings(encoding: str) -> None:
    text = (
        "code;name;village;commune;province\r\n"
        "HY-TL-001;Nhà văn hóa thôn Đông, xóm 1;Thôn Đông;Xã Tiên Lữ;Hưng Yên\r\n"
        'HY-HN-002;"Tổ 3; Hiến Nam";Tổ 3;Phường Hiến Nam;Hưng Yên\r\n'
    )
    sites = parse_sites(decode_csv(text.encode(encoding)), new_key=keys())
    assert [(s.code, s.name, s.commune) for s in sites] == [
        ("HY-TL-001", "Nhà văn hóa thôn Đông, xóm 1", "Xã Tiên Lữ"),
        ("HY-HN-002", "Tổ 3; Hiến Nam", "Phường Hiến Nam"),
    ]


def test_semicolon_file_names_its_bad_lines() -> None:
    text = "code;name;commune\nA1;Thôn A;Xã X\nbad code;Thôn B;Xã X\nA3;;Xã X\n"
    with pytest.raises(SiteImportError) as caught:
        parse_sites(text)
    assert [line for line, _ in caught.value.problems] == [3, 4]


def test_columns_in_any_order_with_join_key_and_blank_lines() -> None:
    text = "Name,CODE,join_key\nNhà văn hóa thôn Bắc,B1,secret-1\n\n,,\nNhà văn hóa thôn Nam,B2,\n"
    sites = parse_sites(text, new_key=lambda: "gen")
    assert [(s.code, s.join_key, s.commune) for s in sites] == [
        ("B1", "secret-1", ""),
        ("B2", "gen", ""),
    ]


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ("", [(1, "the file is empty")]),
        ("name,commune\nX,Y\n", [(1, "header lacks column(s): code")]),
        ("code,name,phone\nA,B,1\n", [(1, "unknown column(s): phone")]),
        ("code,name\n", [(1, "no site rows")]),
        (
            "code,name\nA 1,Tên\nB2,\nC3,Tên,extra\nD4,Tên\nD4,Khác\n",
            [
                (2, "code 'A 1' must be"),
                (3, "name is empty"),
                (4, "3 fields"),
                (6, "duplicate code 'D4' (first on line 5)"),
            ],
        ),
        ('code,name\n"Q1,Multi\nline"\nE5,\n', [(3, "code 'Q1,Multi"), (4, "name is empty")]),
        ("code,name\nA1," + "x" * 201 + "\n", [(2, "name longer than 200")]),
    ],
)
def test_bad_rows_are_reported_with_line_numbers(text: str, problems) -> None:
    with pytest.raises(SiteImportError) as info:
        parse_sites(text)
    got = info.value.problems
    assert [line for line, _ in got] == [line for line, _ in problems]
    for (_, message), (_, expected) in zip(got, problems):
        assert message.startswith(expected), (message, expected)
    assert info.value.status == 400 and info.value.code == "csv_invalid"
    assert f"line {problems[0][0]}" in str(info.value)


def test_non_utf8_names_the_line() -> None:
    data = "code,name\nA1,Tên\n".encode() + "B2,Nhà\n".encode("cp1258")
    with pytest.raises(SiteImportError, match="line 3: not UTF-8"):
        decode_csv(data)


def test_many_errors_are_summarised() -> None:
    text = "code,name\n" + "".join(f"bad code {i},x\n" for i in range(30))
    with pytest.raises(SiteImportError, match="and 10 more") as info:
        parse_sites(text)
    assert len(info.value.problems) == 30


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('code,name\nA1,x\nA2,"' + "y" * 200_000 + '"\n', 3, "unreadable CSV"),
        ("code,name\nA1,x\nA2," + "y" * 200_000 + "\n", 3, "unreadable CSV"),
        ("code,name\nA1,Nhà\x00văn\n", 2, "control character"),
        ("code,name,commune\nA1,x,Xã\tA\n", 2, "control character"),
    ],
)
def test_hostile_fields_are_refused_by_line(text: str, line: int, words: str) -> None:
    with pytest.raises(SiteImportError) as info:
        parse_sites(text)
    assert info.value.problems[0][0] == line and words in info.value.problems[0][1]


def test_formulas_are_kept_as_data() -> None:
    (site,) = parse_sites('code,name,commune\nA1,"=HYPERLINK(""x"")",@SUM(A1)\n')
    assert site.name == '=HYPERLINK("x")' and site.commune == "@SUM(A1)"
