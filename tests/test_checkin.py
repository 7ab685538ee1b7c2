"""Check-in rules: names, identifiers, dedupe keys, token buckets with an injected clock."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.checkin import (
    Checkin,
    CheckinError,
    CheckinLimiter,
    CheckinLimits,
    InvalidIdentError,
    InvalidNameError,
    KeyedLimiter,
    RateLimitedError,
    TokenBucket,
    clean_name,
    dedupe_key,
    mask_ident,
    name_key,
    normalize_ident,
    parse_checkin,
    reply_as_duplicate,
)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  Nguyễn   Văn An ", "Nguyễn Văn An"),
        ("Nguye\u0302\u0303n Thi\u0323 Ha\u0300", "Nguyễn Thị Hà"),  # decomposed input -> NFC
        ("Bà Tư", "Bà Tư"),
        ("O'Brien-Lê", "O'Brien-Lê"),
    ],
)
def test_clean_name(raw, clean):
    assert clean_name(raw) == clean


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (None, "must be a string"),
        ("   ", "required"),
        ("x" * 101, "longer than 100"),
        ("An\u200b", "invisible"),
        ("An\x00", "control"),
        ("12345", "letters"),
        (42, "must be a string"),
    ],
)
def test_bad_names(raw, message):
    with pytest.raises(InvalidNameError, match=message):
        clean_name(raw)


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("Nguyễn Văn Ân", "nguyen van an", True),
        ("ĐỖ THỊ HÀ", "do thi ha", True),
        ("Trần  Bình.", "tran binh", True),
        ("Nguyễn Văn An", "Nguyễn Văn Anh", False),
    ],
)
def test_name_key_folds_case_spacing_and_diacritics(a, b, same):
    assert (name_key(a) == name_key(b)) is same


@pytest.mark.parametrize(
    ("raw", "ident"),
    [
        (None, None),
        ("", None),
        ("  ", None),
        ("0912 345 678", "0912345678"),
        ("+84 912 345 678", "0912345678"),
        ("84-912-345-678", "0912345678"),
        ("001203004567", "001203004567"),
        ("ab.12/3", "AB123"),
        ("０９１２", "0912"),
    ],
)
def test_normalize_ident(raw, ident):
    assert normalize_ident(raw) == ident


@pytest.mark.parametrize(
    ("raw", "message"),
    [("x" * 41, "longer"), ("12#4", "only letters"), ("12+4", "only letters"), (12, "string")],
)
def test_bad_idents(raw, message):
    with pytest.raises(InvalidIdentError, match=message):
        normalize_ident(raw)


@pytest.mark.parametrize(
    ("ident", "masked"), [(None, None), ("0912345678", "•••••••678"), ("AB12", "•••2"), ("7", "7")]
)
def test_mask_ident(ident, masked):
    assert mask_ident(ident) == masked


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (("c1", "A", "Nguyễn Văn An", None), ("c1", "A", "nguyen van an", None), True),
        (("c1", "A", "Nguyễn Văn An", None), ("c1", "B", "Nguyễn Văn An", None), False),  # per site
        (
            ("c1", "A", "An", "0912345678"),
            ("c1", "B", "Nguyễn Văn An", "0912345678"),
            True,
        ),  # per class
        (("c1", "A", "An", "0912345678"), ("c2", "A", "An", "0912345678"), False),
        (("c1", "A", "An", "0912345678"), ("c1", "A", "An", None), False),
        (("c1", "A", "An", "0912345678"), ("c1", "A", "An", "0912345679"), False),
    ],
)
def test_dedupe_keys(a, b, same):
    assert (dedupe_key(*a) == dedupe_key(*b)) is same


def test_dedupe_key_holds_no_personal_data():
    key = dedupe_key("c1", "HY-01", "Nguyễn Văn An", "0912345678")
    assert "0912345678" not in key and "nguyen" not in key and len(key) < 64


def test_parse_checkin():
    assert parse_checkin(
        {"name": " Lê  Thị Hoa ", "ident": "+84912345678"}, by="operator"
    ) == Checkin("Lê Thị Hoa", "0912345678", "operator")
    assert parse_checkin({"name": "Hoa"}).event_data() == {"name": "Hoa", "ident": None, "by": "qr"}
    assert (
        parse_checkin({"name": "Hoa", "ident": "0912345678"}).event_data()["ident"] == "•••••••678"
    )


@pytest.mark.parametrize(
    ("body", "by", "error", "message"),
    [
        ([], "qr", CheckinError, "JSON object"),
        ({"name": "An", "age": 3}, "qr", CheckinError, "unknown"),
        ({"name": "An"}, "robot", CheckinError, "'by'"),
        ({}, "qr", InvalidNameError, "string"),
    ],
)
def test_parse_checkin_errors(body, by, error, message):
    with pytest.raises(error, match=message):
        parse_checkin(body, by=by)


@given(st.text(max_size=120))
def test_clean_name_either_cleans_or_says_why(raw):
    try:
        name = clean_name(raw)
    except InvalidNameError:
        return
    assert name == clean_name(name) and 0 < len(name) <= 100


# --- rate limits ------------------------------------------------------------------------------


def test_token_bucket_refills_with_the_clock():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take() and not bucket.take()
    clock.now += 100
    assert bucket.available() == 3  # never more than the burst
    clock.now -= 50  # a clock stepping back adds nothing
    assert bucket.available() == 3 and bucket.is_full()


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (1, 0.5), (float("inf"), 5)])
def test_token_bucket_rejects_bad_figures(rate, burst):
    with pytest.raises(ValueError, match="token bucket"):
        TokenBucket(rate, burst)


def test_keyed_limiter_is_per_key_and_bounded():
    clock = FakeClock()
    limiter = KeyedLimiter(rate=1, burst=2, clock=clock, max_keys=3)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b")
    with pytest.raises(RateLimitedError) as info:
        limiter.check("a", "for site a")
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert "for site a" in str(info.value)
    for key in ("c", "d", "e"):
        limiter.allow(key)
    assert len(limiter) == 3
    assert limiter.allow("a") and limiter.allow("a")  # "a" was dropped: it starts full again


def test_checkin_limiter_site_and_address():
    clock = FakeClock()
    limiter = CheckinLimiter(
        CheckinLimits(site_rate=1, site_burst=3, address_rate=1, address_burst=2), clock=clock
    )
    limiter.check("c1", "A", "10.0.0.1")
    limiter.check("c1", "A", "10.0.0.1")
    with pytest.raises(RateLimitedError, match="from this address"):
        limiter.check("c1", "A", "10.0.0.1")
    limiter.check("c1", "A", "10.0.0.2")  # another phone: the site still has one token
    with pytest.raises(RateLimitedError, match="for site A") as info:
        limiter.check("c1", "A", "10.0.0.3")
    assert info.value.retry_after_s == pytest.approx(1.0)
    assert limiter.addresses.bucket("qr\x1f10.0.0.3").available() == 2  # refused: none taken
    limiter.check("c1", "B", "10.0.0.3")  # other sites are not affected
    limiter.check("c2", "A", "10.0.0.3")  # nor the same site in another class
    clock.now += 1
    limiter.check("c1", "A", None)  # the operator's own page: no address limit


def test_the_operator_has_a_budget_of_its_own():
    """A stranger with the QR link who spends the participants' budget (site and address)
    cannot get the hall operator's check-ins refused, nor the other way round."""
    limiter = CheckinLimiter(
        CheckinLimits(site_rate=1, site_burst=2, address_rate=1, address_burst=2),
        clock=FakeClock(),
    )
    for _ in range(2):
        limiter.check("c1", "A", "10.0.0.1")
    with pytest.raises(RateLimitedError):
        limiter.check("c1", "A", "10.0.0.1")
    with pytest.raises(RateLimitedError):
        limiter.check("c1", "A", "10.0.0.9")  # the hall's real phones: the site's QR budget
    limiter.check("c1", "A", "10.0.0.1", by="operator")  # same hall, same address: admitted
    limiter.check("c1", "A", "10.0.0.1", by="operator")
    with pytest.raises(RateLimitedError):
        limiter.check("c1", "A", "10.0.0.1", by="operator")  # the operator has a budget too


@pytest.mark.parametrize(
    ("counted", "counted_at", "site", "told"),
    [
        (True, "A", "A", False),  # a new person
        (False, "A", "A", True),  # already counted here: the hall may know
        (False, "A", "B", False),  # counted at another site: the reply of a fresh one
    ],
)
def test_a_duplicate_is_told_only_to_its_own_site(counted, counted_at, site, told):
    assert reply_as_duplicate(counted, counted_at, site) is told
