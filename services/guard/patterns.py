"""Validated pattern recognizers for structured PII (checksums, range rules, context words).

Each recognizer finds candidates (a regular expression, or phonenumbers' matcher), drops those
that fail the type's validation — kept by libraries where one exists: phonenumbers (numbering
plans), python-stdnum (IBAN registry, Luhn, SSN/ITIN rules, national identifiers), ipaddress —
and sets a confidence:
high for a validated, well-formatted value, low for a bare one, raised when a context word
("ssn", "phone", "card", ...) stands just before it. The guard's thresholds then decide.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.au import tfn
from stdnum.es import nif
from stdnum.gb import nhs
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.pl import pesel
from stdnum.us import itin, ssn

from services.guard.spans import PATTERN, Entity

EMAIL_ADDRESS = "EMAIL_ADDRESS"
PHONE_NUMBER = "PHONE_NUMBER"
CREDIT_CARD = "CREDIT_CARD"
US_SSN = "US_SSN"
US_ITIN = "US_ITIN"
IP_ADDRESS = "IP_ADDRESS"
IBAN_CODE = "IBAN_CODE"
URL = "URL"
DOMAIN_NAME = "DOMAIN_NAME"
ZIP_CODE = "ZIP_CODE"
US_DRIVER_LICENSE = "US_DRIVER_LICENSE"
# National identifiers (Presidio's names), validated by python-stdnum.
UK_NHS = "UK_NHS"
ES_NIF = "ES_NIF"
IT_FISCAL_CODE = "IT_FISCAL_CODE"
PL_PESEL = "PL_PESEL"
IN_AADHAAR = "IN_AADHAAR"
AU_TFN = "AU_TFN"

PATTERN_TYPES: tuple[str, ...] = (
    EMAIL_ADDRESS, PHONE_NUMBER, CREDIT_CARD, US_SSN, US_ITIN, IP_ADDRESS, IBAN_CODE, URL, DOMAIN_NAME,
    ZIP_CODE, US_DRIVER_LICENSE, UK_NHS, ES_NIF, IT_FISCAL_CODE, PL_PESEL, IN_AADHAAR, AU_TFN,
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
# phonenumbers (Google's libphonenumber metadata) finds and parses numbers with a country code
# ("+44 20 7946 0958", "011 44 ...", "00 44 ...") and national North American ones, extensions
# included, and knows each country's numbering plan.
_NATIONAL_REGION = "US"
# 00 is the international call prefix nearly everywhere outside North America (which dials 011):
# numbers written "00 CC ..." are read as a region that uses it would.
_IDD_00_REGION = "GB"
# Local formats ("439 4166", "0380 7558505", "(72) 583-350", "0481 38 27 75"): digit groups in a
# national format without a country, which no numbering plan can confirm (almost any digit string
# is a valid number in some country), so they count only with phone context before or a label after.
_PHONE_LOCAL = re.compile(
    r"(?<![\w+.,-])(?:\(\d{1,5}\)\s?|\d{2,5}[ .-])(?:\d{2,6}[ .-]){0,4}\d{2,8}(?![\w-]|[.,]\d)")
_PHONE_LABEL_AFTER = re.compile(r"[ \t]{0,3}[(\[]?(?:office|fax|mobile|cell|home|work|tel|phone)\b", re.IGNORECASE)
_PHONE_CONTEXT = _context(
    r"phone|call|tel\b|telephone|mobile|cell|fax|contact|reach|whatsapp|sms|text me|direct line|hotline|landline|"
    r"helpline|(?:my|her|his|new) number")


def _phone_context(text: str, start: int, end: int) -> bool:
    """A phone word before the number, or a label such as "office" or "fax" right after it."""
    return _has_context(text, start, _PHONE_CONTEXT) or _PHONE_LABEL_AFTER.match(text, end) is not None


def fits_numbering_plan(number: phonenumbers.PhoneNumber) -> bool:
    """A possible length and digits that the country's numbering plan allows (its general pattern),
    whether or not the range is assigned yet: stricter than a length check, looser than
    `phonenumbers.is_valid_number`, which rejects numbers from unassigned or fictional ranges."""
    # "Local only" lengths (seven digits in the US) are left to the local-format rule and its context.
    if phonenumbers.is_possible_number_with_reason(number) != phonenumbers.ValidationResult.IS_POSSIBLE:
        return False
    national = phonenumbers.national_significant_number(number)
    for region in phonenumbers.region_codes_for_country_code(number.country_code):
        metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(number.country_code, region)
        pattern = metadata.general_desc.national_number_pattern if metadata else None
        if pattern and re.fullmatch(pattern, national):
            return True
    return False


def _looks_like_ipv4(candidate: str) -> bool:
    try:
        ipaddress.IPv4Address(candidate)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _PhoneMatch:
    start: int
    end: int
    raw: str
    number: phonenumbers.PhoneNumber


# Where a number may start with the 00 prefix; only there is the text read the 00 way (reading all of
# it so would parse every digit group as a national number of that region: slow, and not wanted).
_IDD_00 = re.compile(r"(?<![\w+])00[ .-]?[1-9]")
_IDD_00_WINDOW = 40  # "00 44 20 7946 0958 ext. 12345" and some


def _phone_matches(text: str) -> Iterator[_PhoneMatch]:
    # max_tries bounds the candidates phonenumbers looks at; a long text must not lose its tail.
    tries = max(len(text), 65535)
    for m in phonenumbers.PhoneNumberMatcher(text, _NATIONAL_REGION, phonenumbers.Leniency.POSSIBLE, tries):
        yield _PhoneMatch(m.start, m.end, m.raw_string, m.number)
    for idd in _IDD_00.finditer(text):
        window = text[idd.start():idd.start() + _IDD_00_WINDOW]
        for m in phonenumbers.PhoneNumberMatcher(window, _IDD_00_REGION, phonenumbers.Leniency.POSSIBLE):
            if m.start == 0 and m.raw_string.startswith("00"):
                yield _PhoneMatch(idd.start(), idd.start() + m.end, m.raw_string, m.number)


def _looks_like_date(candidate: str) -> bool:
    """"2003-06-04", "27.01.2001": three groups, a year at one end, day and month numbers."""
    groups = re.split(r"[ .-]", candidate)
    if len(groups) != 3 or not all(g.isdigit() for g in groups):
        return False
    for year, rest in ((groups[0], groups[1:]), (groups[2], groups[:2])):
        if len(year) == 4 and 1900 <= int(year) <= 2099 and all(1 <= int(g) <= 31 for g in rest):
            return True
    return False


def find_phone_numbers(text: str) -> Iterator[Entity]:
    seen: list[tuple[int, int]] = []
    for match in _phone_matches(text):
        raw = match.raw
        if any(s < match.end and match.start < e for s, e in seen) or _looks_like_ipv4(raw):
            continue  # "143.164.26.163" would parse as +1 431 642 6163
        if fits_numbering_plan(match.number):
            valid = phonenumbers.is_valid_number(match.number)
            if raw.startswith(("+", "00", "011")):
                confidence = 0.85 if valid else 0.75
            elif raw.isdigit():
                confidence = 0.4  # ten bare digits are as often an order or account number
            else:
                confidence = 0.75 if valid else 0.45
            seen.append((match.start, match.end))
        else:
            # A possible length only ("(162) 172-0488": no area code starts with 1): context decides.
            confidence = 0.3
        if _phone_context(text, match.start, match.end):
            confidence += 0.25
        yield _entity(PHONE_NUMBER, match.start, match.end, confidence)
    for m in _PHONE_LOCAL.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if not 6 <= len(digits) <= 12 or _looks_like_date(m.group()):
            continue
        if any(s <= m.start() and m.end() <= e for s, e in seen):
            continue
        # A local match that overlaps a parsed number extends it ("21 253 833 3847"); merging joins the two.
        if _phone_context(text, m.start(), m.end()):
            yield _entity(PHONE_NUMBER, m.start(), m.end(), 0.7)


# CREDIT_CARD --------------------------------------------------------------------------------------
# Not glued to letters: "U62928788557186" is an alphanumeric id, whatever its digits' checksum.
_CARD = re.compile(r"(?<![\w.,])(?<!\d[ -])\d(?:[ -]?\d){11,18}(?![ -]?\d|[^\W\d_])")
_CARD_CONTEXT = _context(r"card|credit|debit|visa|mastercard|amex|american express|discover|payment|cc\b|pan\b")


def _card_brand_prefix(digits: str) -> bool:
    """Issuer prefixes (IIN ranges) of the major networks, with their lengths (python-stdnum has the
    Luhn check, not the networks' ranges)."""
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
        or ((two == 50 or 56 <= two <= 69) and 12 <= n <= 19)  # Maestro
    )


def find_credit_cards(text: str) -> Iterator[Entity]:
    for m in _CARD.finditer(text):
        raw = m.group()
        separators = set(re.sub(r"\d", "", raw))
        digits = re.sub(r"\D", "", raw)
        if len(separators) > 1 or len(set(digits)) == 1 or not luhn.is_valid(digits):
            continue
        # Twelve digits (short Maestro numbers) are as often an account or order number: context decides.
        confidence = 0.95 if _card_brand_prefix(digits) and len(digits) > 12 else 0.3
        if _has_context(text, m.start(), _CARD_CONTEXT):
            confidence += 0.35
        yield _entity(CREDIT_CARD, m.start(), m.end(), confidence)


# US_SSN / US_ITIN ---------------------------------------------------------------------------------
# One shape, two numbers: python-stdnum knows the SSA's rules (area 000, 666 and 9xx, group 00 and
# serial 0000 never issued, the published advertising numbers) and the IRS's ITIN ranges (9xx with
# groups 50-65, 70-88, 90-92, 94-99).
_SSN = re.compile(r"(?<![\w-])(\d{3})([- ]?)(\d{2})\2(\d{4})(?![\w]|-\d)")
_SSN_CONTEXT = _context(r"ssn|social security|social sec|ss#|ss #|taxpayer|tin\b|itin\b")


def find_ssns(text: str) -> Iterator[Entity]:
    for m in _SSN.finditer(text):
        area, separator, group, serial = m.groups()
        digits = area + group + serial
        if len(set(digits)) == 1:  # "111-11-1111" is a placeholder, whatever the rules say
            continue
        if ssn.is_valid(digits):
            kind = US_SSN
        elif itin.is_valid(digits):
            kind = US_ITIN
        else:
            continue
        confidence = {"-": 0.85, " ": 0.6}.get(separator, 0.3)
        if _has_context(text, m.start(), _SSN_CONTEXT):
            confidence += 0.3
        yield _entity(kind, m.start(), m.end(), confidence)


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
_IBAN = re.compile(r"(?<!\w)[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]){11,30}")
_IBAN_MIN_LENGTH = 15  # Norway's; the longest are 34 (ISO 13616)


def find_ibans(text: str) -> Iterator[Entity]:
    """python-stdnum checks each country's length and account format (its copy of the SWIFT IBAN
    registry) and the ISO 7064 mod-97 check digits."""
    for m in _IBAN.finditer(text):
        # The regex may run into a following word: the longest prefix that is a valid IBAN is the IBAN.
        positions = [i for i in range(m.start(), m.end()) if text[i] != " "]
        compact = "".join(text[i] for i in positions).upper()
        for length in range(len(compact), _IBAN_MIN_LENGTH - 1, -1):
            end = positions[length - 1] + 1
            if (end == len(text) or not text[end].isalnum()) and iban.is_valid(compact[:length]):
                yield _entity(IBAN_CODE, m.start(), end, 0.95)
                break


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


# National identifiers ---------------------------------------------------------------------------
@dataclass(frozen=True)
class NationalIdentifier:
    """An identifier whose check digits and structure python-stdnum validates. A check digit still
    passes about one random number in ten, so most need a context word before them."""

    type: str
    shape: re.Pattern[str]
    is_valid: Callable[[str], bool]
    context: re.Pattern[str]
    # Confidence without the context word; None: not reported without it.
    bare_confidence: float | None = None


def _standalone(shape: str) -> re.Pattern[str]:
    """`shape` not glued to letters, digits or a dash-joined number on either side."""
    return re.compile(rf"(?<![\w-]){shape}(?![\w]|-\d)")


# A fiscal code's digits may be replaced by these letters (omocodia).
_FISCAL_DIGIT = "[0-9LMNPQRSTUV]"
_FISCAL_CODE = rf"[A-Z]{{6}}{_FISCAL_DIGIT}{{2}}[A-EHLMPR-T]{_FISCAL_DIGIT}{{2}}[A-Z]{_FISCAL_DIGIT}{{3}}[A-Z]"

NATIONAL_IDENTIFIERS: tuple[NationalIdentifier, ...] = (
    NationalIdentifier(UK_NHS, _standalone(r"\d{3}[ -]?\d{3}[ -]?\d{4}"), nhs.is_valid, _context(r"nhs")),
    NationalIdentifier(ES_NIF, _standalone(r"(?:\d{8}|[XYZKLM]-?\d{7})-?[A-Z]"), nif.is_valid,
                       _context(r"nif\b|n\.i\.f|dni\b|nie\b|documento")),
    # Sixteen characters in a fixed letter/digit layout: the shape alone is telling.
    NationalIdentifier(IT_FISCAL_CODE, _standalone(_FISCAL_CODE), codicefiscale.is_valid,
                       _context(r"codice fiscale|fiscal code|tax code|c\.f\.|cf\b"), bare_confidence=0.7),
    NationalIdentifier(PL_PESEL, _standalone(r"\d{11}"), pesel.is_valid, _context(r"pesel")),
    NationalIdentifier(IN_AADHAAR, _standalone(r"[2-9]\d{3}[ -]?\d{4}[ -]?\d{4}"), aadhaar.is_valid,
                       _context(r"aadhaa?r|uidai")),
    NationalIdentifier(AU_TFN, _standalone(r"\d{3} ?\d{3} ?\d{2,3}"), tfn.is_valid, _context(r"tfn\b|tax file")),
)


def find_national_identifiers(text: str) -> Iterator[Entity]:
    for identifier in NATIONAL_IDENTIFIERS:
        for m in identifier.shape.finditer(text):
            if not identifier.is_valid(m.group()):
                continue
            if _has_context(text, m.start(), identifier.context):
                confidence = max(identifier.bare_confidence or 0.0, 0.6) + 0.2
            elif identifier.bare_confidence is not None:
                confidence = identifier.bare_confidence
            else:
                continue
            yield _entity(identifier.type, m.start(), m.end(), confidence)


RECOGNIZERS: tuple[Recognizer, ...] = (
    find_emails, find_phone_numbers, find_credit_cards, find_ssns, find_ip_addresses, find_ibans,
    find_urls_and_domains, find_zip_codes, find_driver_licenses, find_national_identifiers,
)


def recognize(text: str) -> list[Entity]:
    """Every pattern finding in `text`, overlapping ones included (merging is the caller's step)."""
    return [entity for recognizer in RECOGNIZERS for entity in recognizer(text)]
