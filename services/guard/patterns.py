"""Validated pattern recognizers for structured PII (checksums, range rules, context words).

Each recognizer finds candidates with a regular expression, drops those that fail the
type's validation (Luhn, mod-97, SSN ranges, ipaddress parsing, ...), and sets a confidence:
high for a validated, well-formatted value, low for a bare one, raised when a context word
("ssn", "phone", "card", ...) stands just before it. The guard's thresholds then decide.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator

from services.guard.spans import PATTERN, Entity

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
IP_ADDRESS = "IP_ADDRESS"
IBAN_CODE = "IBAN_CODE"
URL = "URL"
DOMAIN_NAME = "DOMAIN_NAME"
ZIP_CODE = "ZIP_CODE"
US_DRIVER_LICENSE = "US_DRIVER_LICENSE"

PATTERN_TYPES: tuple[str, ...] = (
    EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, IP_ADDRESS, IBAN_CODE, URL, DOMAIN_NAME,
    ZIP_CODE, US_DRIVER_LICENSE,
)

# How far before a match a context word may stand (characters).
CONTEXT_WINDOW = 48

Recognizer = Callable[[str], Iterator[Entity]]


def _context(words: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{words})", re.IGNORECASE)


def _has_context(text: str, start: int, words: re.Pattern[str]) -> bool:
    return words.search(text, max(0, start - CONTEXT_WINDOW), start) is not None


def _entity(kind: str, start: int, end: int, confidence: float) -> Entity:
    return Entity(kind, start, end, round(min(confidence, 1.0), 3), PATTERN)


# EMAIL_ADDRESS ------------------------------------------------------------------------------------
_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)


def find_emails(text: str) -> Iterator[Entity]:
    for m in _EMAIL.finditer(text):
        local = m.group().split("@", 1)[0]
        if ".." in local or local.endswith("."):
            continue
        yield _entity(EMAIL_ADDRESS, m.start(), m.end(), 0.95)


# PHONE_NUMBER -------------------------------------------------------------------------------------
_EXTENSION = r"(?:\s?(?:x|ext\.?)\s?\d{1,5})?"
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?:\+?1[\s.-]?)?(?:\((\d{3})\)|(\d{3}))[\s.-]?(\d{3})[\s.-]?(\d{4})" + _EXTENSION + r"(?![\w]|-\d)"
)
# Local formats ("439 4166", "0380 7558505", "(72) 583-350"): digit groups only; accepted only with
# phone context before or a label after, since bare digit groups are everywhere in prose and code.
_PHONE_LOCAL = re.compile(r"(?<![\w+.,-])(?:\(\d{2,5}\)\s?|\d{2,5}[ .-])(?:\d{2,5}[ .-]){0,3}\d{3,8}(?![\w-]|[.,]\d)")
_PHONE_LABEL_AFTER = re.compile(r"[ \t]{0,3}[(\[]?(?:office|fax|mobile|cell|home|work|tel|phone)\b", re.IGNORECASE)
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[\s.-]?\(?\d{1,4}\)?){2,6}(?!\w|-\d)")
_PHONE_CONTEXT = _context(r"phone|call|tel\b|telephone|mobile|cell|fax|contact|reach|whatsapp|sms|text me")


def _phone_context(text: str, start: int, end: int) -> bool:
    """A phone word before the number, or a label such as "office" or "fax" right after it."""
    return _has_context(text, start, _PHONE_CONTEXT) or _PHONE_LABEL_AFTER.match(text, end) is not None


def find_phone_numbers(text: str) -> Iterator[Entity]:
    seen: list[tuple[int, int]] = []
    for m in _PHONE_NANP.finditer(text):
        area = m.group(1) or m.group(2)
        exchange = m.group(3)
        formatted = m.group() != re.sub(r"\D", "", m.group())
        # NANP: area code and exchange start with 2-9; others are placeholders or not phone numbers.
        valid = area[0] in "23456789" and exchange[0] in "23456789"
        confidence = (0.7 if formatted else 0.4) if valid else 0.3
        if _phone_context(text, m.start(), m.end()):
            confidence += 0.25
        seen.append((m.start(), m.end()))
        yield _entity(PHONE_NUMBER, m.start(), m.end(), confidence)
    for m in _PHONE_INTL.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        # E.164 allows at most 15 digits; fewer than 8 is an extension or a code, not a number.
        if not 8 <= len(digits) <= 15 or any(s <= m.start() < e for s, e in seen):
            continue
        confidence = 0.75 + (0.2 if _phone_context(text, m.start(), m.end()) else 0.0)
        seen.append((m.start(), m.end()))
        yield _entity(PHONE_NUMBER, m.start(), m.end(), confidence)
    for m in _PHONE_LOCAL.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if not 7 <= len(digits) <= 12 or any(s < m.end() and m.start() < e for s, e in seen):
            continue
        if _phone_context(text, m.start(), m.end()):
            yield _entity(PHONE_NUMBER, m.start(), m.end(), 0.7)


# CREDIT_CARD --------------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\d.,])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)")
_CARD_CONTEXT = _context(r"card|credit|debit|visa|mastercard|amex|american express|discover|payment|cc\b|pan\b")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_brand_prefix(digits: str) -> bool:
    """Issuer prefixes (IIN ranges) of the major networks, with their lengths."""
    n = len(digits)
    two, four = int(digits[:2]), int(digits[:4])
    return (
        (digits[0] == "4" and n in (13, 16, 19))  # Visa
        or ((51 <= two <= 55 or 2221 <= four <= 2720) and n == 16)  # Mastercard
        or (two in (34, 37) and n == 15)  # American Express
        or ((digits.startswith("6011") or two == 65 or 644 <= int(digits[:3]) <= 649) and n in (16, 19))
        or (3528 <= four <= 3589 and 16 <= n <= 19)  # JCB
        or ((two in (36, 38, 39) or 300 <= int(digits[:3]) <= 305) and 14 <= n <= 19)  # Diners
        or (two == 62 and 16 <= n <= 19)  # UnionPay
    )


def find_credit_cards(text: str) -> Iterator[Entity]:
    for m in _CARD.finditer(text):
        raw = m.group()
        separators = set(re.sub(r"\d", "", raw))
        digits = re.sub(r"\D", "", raw)
        if len(separators) > 1 or len(set(digits)) == 1 or not luhn_valid(digits):
            continue
        confidence = 0.95 if _card_brand_prefix(digits) else 0.3
        if _has_context(text, m.start(), _CARD_CONTEXT):
            confidence += 0.35
        yield _entity(CREDIT_CARD, m.start(), m.end(), confidence)


# US_SSN -------------------------------------------------------------------------------------------
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w]|-\d)")
_SSN_CONTEXT = _context(r"ssn|social security|social sec|ss#|ss #|taxpayer|tin\b")


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area 000, 666 and 900-999 are never issued; group 00 and serial 0000 neither."""
    if area == "000" or area == "666" or area[0] == "9":
        return False
    if group == "00" or serial == "0000":
        return False
    return len(set(area + group + serial)) > 1


def find_ssns(text: str) -> Iterator[Entity]:
    for m in _SSN.finditer(text):
        area, separator, group, serial = m.groups()
        if not ssn_valid(area, group, serial):
            continue
        confidence = {"-": 0.85, " ": 0.6}.get(separator, 0.3)
        if _has_context(text, m.start(), _SSN_CONTEXT):
            confidence += 0.3
        yield _entity(US_SSN, m.start(), m.end(), confidence)


# IP_ADDRESS ---------------------------------------------------------------------------------------
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)
_VERSION_CONTEXT = _context(r"version|release|v\b|build")


def find_ip_addresses(text: str) -> Iterator[Entity]:
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        # "version 1.2.3.4" is a version number, not a host.
        confidence = 0.3 if _has_context(text, m.start(), _VERSION_CONTEXT) else 0.75
        yield _entity(IP_ADDRESS, m.start(), m.end(), confidence)
    for m in _IPV6.finditer(text):
        candidate = m.group()
        # C++ scopes (`a::b`) parse as IPv6 too; real addresses in text carry digits.
        if not any(c.isdigit() for c in candidate):
            continue
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield _entity(IP_ADDRESS, m.start(), m.end(), 0.75)


# IBAN_CODE ----------------------------------------------------------------------------------------
# Length of the IBAN by country (ISO 13616 registry).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_IBAN = re.compile(r"(?<!\w)[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}")


def iban_valid(iban: str) -> bool:
    """Country length and the ISO 7064 mod-97 check (the rearranged number mod 97 is 1)."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    rearranged = iban[4:] + iban[:4]
    number = "".join(str(int(ch, 36)) for ch in rearranged)
    return int(number) % 97 == 1


def find_ibans(text: str) -> Iterator[Entity]:
    for m in _IBAN.finditer(text):
        length = IBAN_LENGTHS.get(m.group()[:2])
        if length is None:
            continue
        # The regex may run into a following word; the country's length says where the IBAN ends.
        compact, end = "", m.start()
        for i in range(m.start(), m.end()):
            if text[i] != " ":
                compact += text[i]
                if len(compact) == length:
                    end = i + 1
                    break
        if len(compact) != length or (end < len(text) and text[end].isalnum()):
            continue
        if iban_valid(compact):
            yield _entity(IBAN_CODE, m.start(), end, 0.95)


# URL / DOMAIN_NAME --------------------------------------------------------------------------------
_URL = re.compile(r"(?<![\w@])(?:(?:https?|ftp)://|www\.)[^\s<>\"'`(){}\[\]]+", re.IGNORECASE)
# Top-level domains that rarely collide with code (`self.app`, `main.rs`, `setup.py` are not domains).
_TLDS = (
    "com|org|net|edu|gov|mil|int|io|ai|co|info|biz|us|uk|de|fr|eu|ca|au|jp|cn|nl|ch|se|es|ru|br|"
    "mx|kr|nz|ie|dk|fi|be|pt|gr|cz|hu|ro|za|sg|hk|tw|ar|cl"
)
_DOMAIN = re.compile(
    rf"(?<![\w@./-])(?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+(?:{_TLDS})(?![\w-]|\.\w|\()",
    re.IGNORECASE,
)


def find_urls_and_domains(text: str) -> Iterator[Entity]:
    for m in _URL.finditer(text):
        end = m.end()
        while end > m.start() and text[end - 1] in ".,;:!?":  # sentence punctuation, not the URL
            end -= 1
        confidence = 0.8 if "://" in m.group() else 0.7
        yield _entity(URL, m.start(), end, confidence)
    for m in _DOMAIN.finditer(text):
        yield _entity(DOMAIN_NAME, m.start(), m.end(), 0.6)


# ZIP_CODE -----------------------------------------------------------------------------------------
_ZIP = re.compile(r"(?<![\w$.,-])\d{5}(?:-\d{4})?(?![\w]|-\d|[.,]\d)")
_US_STATES = frozenset(
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ NM "
    "NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR".split()
)
_STATE_BEFORE = re.compile(r"\b([A-Z]{2}),?\s+$")
_ZIP_CONTEXT = _context(r"zip|postal|postcode|post code|mailing address|address")


def find_zip_codes(text: str) -> Iterator[Entity]:
    for m in _ZIP.finditer(text):
        # A bare five-digit number is usually a count or an id; a state code or a context word makes it a ZIP.
        confidence = 0.3 if "-" in m.group() else 0.05
        state = _STATE_BEFORE.search(text, max(0, m.start() - 8), m.start())
        if state and state.group(1) in _US_STATES:
            confidence = 0.75
        if _has_context(text, m.start(), _ZIP_CONTEXT):
            confidence += 0.45
        yield _entity(ZIP_CODE, m.start(), m.end(), confidence)


# US_DRIVER_LICENSE --------------------------------------------------------------------------------
# State formats overlap with every other id number, so a licence number is only told apart by
# what precedes it; without such words no finding is made at all.
_LICENSE_CONTEXT = _context(
    r"driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|licen[cs]e\s+(?:no|number|#)|dl\s*(?:#|no\b|number)|dln\b"
)
_LICENSE = re.compile(r"(?<![\w-])(?:[A-Z]{1,2}\d{4,14}|[A-Z]\d{3}-\d{3}-\d{2}-\d{3}-\d|\d{7,12})(?![\w-])")


def find_driver_licenses(text: str) -> Iterator[Entity]:
    for m in _LICENSE.finditer(text):
        if _has_context(text, m.start(), _LICENSE_CONTEXT):
            yield _entity(US_DRIVER_LICENSE, m.start(), m.end(), 0.65)


RECOGNIZERS: tuple[Recognizer, ...] = (
    find_emails, find_phone_numbers, find_credit_cards, find_ssns, find_ip_addresses, find_ibans,
    find_urls_and_domains, find_zip_codes, find_driver_licenses,
)


def recognize(text: str) -> list[Entity]:
    """Every pattern finding in `text`, overlapping ones included (merging is the caller's step)."""
    return [entity for recognizer in RECOGNIZERS for entity in recognizer(text)]
