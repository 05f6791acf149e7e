"""Personal data in documents: found, replaced by a typed placeholder, counted.

    <EMAIL>  <IP_ADDRESS>  <PHONE_NUMBER>  <CN_RESIDENT_ID>  <CARD_NUMBER>

Each kind is validated beyond its shape, so numbers that only look alike are left alone:
- IPv4: four dotted octets 0-255 without leading zeros, not part of a longer dotted run (1.2.3.4.5) and not a
  version (`v1.2.3.4`, "version 10.0.19041.1"); IPv6 through `ipaddress`, which rejects `12:30:45`;
- phone numbers: Google's libphonenumber (`phonenumbers`) matcher at its VALID leniency, which already skips
  dates and times, for the regions in `regions` (a number written with + and its country code matches anywhere);
- Chinese resident IDs: 17 digits + a check character (ISO 7064 MOD 11-2) with a real birth date;
- card numbers: 13-19 digits in groups of spaces or dashes that pass the Luhn check.
"""
from __future__ import annotations

import datetime
import ipaddress
import re
from collections import Counter

EMAIL, IP, PHONE, CN_ID, CARD = "<EMAIL>", "<IP_ADDRESS>", "<PHONE_NUMBER>", "<CN_RESIDENT_ID>", "<CARD_NUMBER>"
KINDS = {"email": EMAIL, "ip_address": IP, "phone_number": PHONE, "cn_resident_id": CN_ID, "card_number": CARD}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,24}(?![\w-])")
_IPV4 = re.compile(r"(?<![\w.])((?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3})"
                   r"(?![\w]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?:\bv|\bversion\s*|\bver\.?\s*|\brelease\s*|\bbuild\s*)$", re.I)
_IPV6 = re.compile(r"(?<![\w:.])(?=[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:)[0-9A-Fa-f:]{2,39}(?:%\w+)?(?![\w:])")
_CN_ID = re.compile(r"(?<!\d)(\d{17}[\dXx])(?![\dA-Za-z])")
_CARD = re.compile(r"(?<![\d-])(\d{4}(?:[ -]?\d{2,4}){2,4}(?:[ -]?\d{1,3})?)(?![\d-])")
_CN_WEIGHTS = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2]
_CN_CHECK = "10X98765432"


def cn_id_valid(s: str) -> bool:
    s = s.upper()
    if len(s) != 18 or not s[:17].isdigit():
        return False
    if _CN_CHECK[sum(int(c) * w for c, w in zip(s[:17], _CN_WEIGHTS)) % 11] != s[17]:
        return False
    try:
        born = datetime.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    return datetime.date(1900, 1, 1) <= born <= datetime.date.today()


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _spans_email(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(), m.end(), "email") for m in _EMAIL.finditer(text)]


def _spans_ip(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _IPV4.finditer(text):
        if not _VERSION_BEFORE.search(text[max(0, m.start() - 12):m.start()]):
            out.append((m.start(), m.end(), "ip_address"))
    for m in _IPV6.finditer(text):
        try:
            ipaddress.IPv6Address(m.group(0).split("%")[0])
        except ValueError:
            continue
        out.append((m.start(), m.end(), "ip_address"))
    return out


def _spans_cn_id(text: str) -> list[tuple[int, int, str]]:
    return [(m.start(1), m.end(1), "cn_resident_id") for m in _CN_ID.finditer(text) if cn_id_valid(m.group(1))]


def _spans_card(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(1))
        if 13 <= len(digits) <= 19 and luhn_valid(digits) and len(set(digits)) > 1:
            out.append((m.start(1), m.end(1), "card_number"))
    return out


def _spans_phone(text: str, regions: tuple[str, ...]) -> list[tuple[int, int, str]]:
    import phonenumbers

    out = []
    if not any(c.isdigit() for c in text):
        return out
    for region in regions:
        for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            out.append((m.start, m.end, "phone_number"))
    return out


def find(text: str, regions: tuple[str, ...] = ("US", "CN", "GB")) -> list[tuple[int, int, str]]:
    """Non-overlapping (start, end, kind) spans, earliest and then longest first."""
    spans = (_spans_email(text) + _spans_cn_id(text) + _spans_card(text) + _spans_ip(text)
             + _spans_phone(text, regions))
    spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
    out, end = [], -1
    for s in spans:
        if s[0] >= end:
            out.append(s)
            end = s[1]
    return out


def redact(text: str, regions: tuple[str, ...] = ("US", "CN", "GB")) -> tuple[str, Counter]:
    """(text with every span replaced by its placeholder, Counter of kinds)."""
    spans = find(text, regions)
    if not spans:
        return text, Counter()
    parts, pos = [], 0
    for start, end, kind in spans:
        parts += [text[pos:start], KINDS[kind]]
        pos = end
    parts.append(text[pos:])
    return "".join(parts), Counter(k for _, _, k in spans)
