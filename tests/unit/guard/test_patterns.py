"""Pattern recognizers: valid values are found with their exact span, invalid look-alikes are not."""

from __future__ import annotations

import pytest

from services.guard import patterns as p
from services.guard.spans import merge_overlapping

DEFAULT_THRESHOLD = 0.5


def found(text: str, kind: str) -> list[str]:
    """Values of `kind` that pass the default threshold after merging."""
    entities = merge_overlapping(e for e in p.recognize(text) if e.confidence >= DEFAULT_THRESHOLD)
    return [text[e.start:e.end] for e in entities if e.type == kind]


@pytest.mark.parametrize("text, value", [
    ("write to john.doe+news@mail.example.co.uk today", "john.doe+news@mail.example.co.uk"),
    ("ANN_LEE@ACME.COM", "ANN_LEE@ACME.COM"),
])
def test_email_found(text: str, value: str) -> None:
    assert found(text, p.EMAIL_ADDRESS) == [value]


@pytest.mark.parametrize("text", ["john..doe@acme.com", "user@localhost", "a@b.c", "@acme.com", "name@-acme.com"])
def test_email_rejected(text: str) -> None:
    assert found(text, p.EMAIL_ADDRESS) == []


@pytest.mark.parametrize("text, value", [
    ("call me at (415) 555-2671.", "(415) 555-2671"),
    ("phone: 415-555-2671", "415-555-2671"),
    ("+1 415.555.2671 is the desk", "+1 415.555.2671"),
    ("London office +44 20 7946 0958", "+44 20 7946 0958"),
    ("my phone 4155552671", "4155552671"),
    ("650-752-7354x549 office", "650-752-7354x549"),  # extension kept
    ("723 813 266 office", "723 813 266"),  # local format, labelled after
    ("0380 7558505 fax", "0380 7558505"),
    ("call me on 439 4166 tonight", "439 4166"),  # local format, context before
    ("(72) 583-350 office", "(72) 583-350"),
    ("called from 21 253 833 3847 today", "21 253 833 3847"),  # a parsed number extended by the local rule
    ("Phone: (1) 824-7680", "(1) 824-7680"),
    ("(162)172-0488x868 mobile", "(162)172-0488x868"),  # outside the numbering plan: the label decides
])
def test_phone_found(text: str, value: str) -> None:
    assert found(text, p.PHONE_NUMBER) == [value]


@pytest.mark.parametrize("text, value", [
    # Numbers with a country code, read by each country's numbering plan (phonenumbers metadata).
    ("Berlin office +49 30 901820", "+49 30 901820"),
    ("Paris: +33 1 42 68 53 00", "+33 1 42 68 53 00"),
    ("Madrid +34 915 21 00 00", "+34 915 21 00 00"),
    ("Zurich +41 (0)72 145 86 83", "+41 (0)72 145 86 83"),
    ("Tokyo +81 3-3224-9999", "+81 3-3224-9999"),
    ("Beijing +86 10 6552 9988", "+86 10 6552 9988"),
    ("Sydney +61 2 9374 4000", "+61 2 9374 4000"),
    ("whatsapp +91 98765 43210", "+91 98765 43210"),
    ("São Paulo +55 11 91234-5678", "+55 11 91234-5678"),
    ("Mexico City +52 55 5062 6000", "+52 55 5062 6000"),
    ("Cape Town +27 21 410 6911", "+27 21 410 6911"),
    # International call prefixes: 00 outside North America, 011 inside.
    ("from Europe dial 0044 20 7946 0958", "0044 20 7946 0958"),
    ("fax 001-829-456-5118 mobile", "001-829-456-5118"),
    ("from the US dial 011 44 20 7946 0958", "011 44 20 7946 0958"),
    # National formats without a country: only with phone context (Belgium, France, Denmark).
    ("phone 0481 38 27 75", "0481 38 27 75"),
    ("Tel. 04.44.34.41.79", "04.44.34.41.79"),
    ("called from 26-91-74-40 today", "26-91-74-40"),
])
def test_phone_found_by_region(text: str, value: str) -> None:
    assert found(text, p.PHONE_NUMBER) == [value]


@pytest.mark.parametrize("text", [
    "order 4155552671 shipped",  # bare digits without context: an id, not a phone
    "(123) 456-7890",  # NANP area codes never start with 1
    "+12 345",  # too few digits
    "2023-10-12",
    "the total was 123 456 789 dollars",  # digit groups without phone context
    "version 1.2.3 released 2024 05 06",
    "see 439 4166 in the ledger",
    "+44 20 7946",  # too short for a UK number
    "+999 123 456 789",  # no such country code
    "+1 123 456 7890",  # no North American area code starts with 1
    "address 143.164.26.163",  # an IPv4 address, though its digits make a +1 number
    "called from 2003-06-04",  # a date, even after a phone word
    "ticket 2270-66-1551",
])
def test_phone_rejected(text: str) -> None:
    assert found(text, p.PHONE_NUMBER) == []


@pytest.mark.parametrize("text, value", [
    ("card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("amex 378282246310005", "378282246310005"),
    ("mc 5555555555554444.", "5555555555554444"),
    ("maestro 6759649826438453", "6759649826438453"),
    ("My card 639098839207 expires soon", "639098839207"),  # twelve-digit Maestro, with context
])
def test_credit_card_found(text: str, value: str) -> None:
    assert found(text, p.CREDIT_CARD) == [value]


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # 16 digits failing Luhn
    "4111111111111112",
    "0000 0000 0000 0000",  # Luhn-valid but one repeated digit
    "4111 1111-1111 1111",  # mixed separators
    "1234 5678 9012 3456 7890 1234",  # longer digit run than any card
    "reference 1000000000000008",  # Luhn-valid but no issuer prefix and no context
    "order 639098839207",  # twelve digits without context: an order number as often as a card
    "licence U62928788557186",  # glued to a letter: an alphanumeric id
])
def test_credit_card_rejected(text: str) -> None:
    assert found(text, p.CREDIT_CARD) == []


@pytest.mark.parametrize("text, value", [
    ("My SSN is 123-45-6789", "123-45-6789"),
    ("ssn 536 22 1846", "536 22 1846"),
    ("social security number 219099998", "219099998"),
])
def test_ssn_found(text: str, value: str) -> None:
    assert found(text, p.US_SSN) == [value]


@pytest.mark.parametrize("text", [
    "000-12-3456", "666-12-3456", "912-34-5678", "123-00-4567", "123-45-0000", "111-11-1111",
    "123-45 6789",  # mixed separators
    "order 219099998",  # nine bare digits without context
    # Numbers published in advertising (the Woolworth wallet card's, the SSA's own): nobody's SSN.
    "ssn 078-05-1120", "ssn 219-09-9999", "ssn 457-55-5462",
])
def test_ssn_rejected(text: str) -> None:
    assert found(text, p.US_SSN) == []


def test_itin_is_told_from_ssn() -> None:
    assert found("ITIN 912-90-3456", p.US_ITIN) == ["912-90-3456"]
    assert found("ITIN 912-90-3456", p.US_SSN) == []
    assert found("912-93-4567", p.US_ITIN) == []  # group 93 is not an ITIN range


@pytest.mark.parametrize("text, value", [
    ("host 192.168.10.1 is down", "192.168.10.1"),
    ("ping 2001:db8::8a2e:370:7334.", "2001:db8::8a2e:370:7334"),
    ("from fe80::1", "fe80::1"),
    ("mapped ::ffff:10.0.0.1", "::ffff:10.0.0.1"),
])
def test_ip_found(text: str, value: str) -> None:
    assert found(text, p.IP_ADDRESS) == [value]


@pytest.mark.parametrize("text", ["256.1.1.1", "1.2.3", "01.2.3.4", "version 1.2.3.4", "at 12:30:45",
                                  "std::vector", "a::b", "1.2.3.4.5"])
def test_ip_rejected(text: str) -> None:
    assert found(text, p.IP_ADDRESS) == []


@pytest.mark.parametrize("text, value", [
    ("IBAN DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    ("GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("to FR1420041010050500013M02606.", "FR1420041010050500013M02606"),
    ("my iban is gb82west12345698765432", "gb82west12345698765432"),
    ("NO93 8601 1117 947 is mine", "NO93 8601 1117 947"),  # the shortest (15)
])
def test_iban_found(text: str, value: str) -> None:
    assert found(text, p.IBAN_CODE) == [value]


@pytest.mark.parametrize("text", [
    "DE89 3704 0044 0532 0130 01",  # mod-97 fails
    "GB82WEST1234569876543",  # one character short for GB
    "ZZ82WEST12345698765432",  # no such country
    "GB83WEST12345698765432",  # check digits
    "GB25123456789012345678",  # length and mod-97 fine, but a UK bank code is four letters
])
def test_iban_rejected(text: str) -> None:
    assert found(text, p.IBAN_CODE) == []


@pytest.mark.parametrize("text, kind, value", [
    ("NHS number 943 476 5870", p.UK_NHS, "943 476 5870"),
    ("mi DNI es 54362315K", p.ES_NIF, "54362315K"),
    ("NIE X-5253868-R", p.ES_NIF, "X-5253868-R"),
    ("codice fiscale RCCMNL83S18D969H", p.IT_FISCAL_CODE, "RCCMNL83S18D969H"),
    ("RCCMNL83S18D969H", p.IT_FISCAL_CODE, "RCCMNL83S18D969H"),  # the layout alone is telling
    ("PESEL 44051401359", p.PL_PESEL, "44051401359"),
    ("Aadhaar 2341 2341 2346", p.IN_AADHAAR, "2341 2341 2346"),
    ("my TFN is 123 456 782", p.AU_TFN, "123 456 782"),
])
def test_national_identifier_found(text: str, kind: str, value: str) -> None:
    assert found(text, kind) == [value]


@pytest.mark.parametrize("text, kind", [
    ("NHS 9434765871", p.UK_NHS),  # check digit
    ("DNI 54362315A", p.ES_NIF),
    ("RCCMNL83S18D969A", p.IT_FISCAL_CODE),
    ("PESEL 44051401358", p.PL_PESEL),
    ("44051401359", p.PL_PESEL),  # valid, but eleven bare digits need the word
    ("Aadhaar 2341 2341 2347", p.IN_AADHAAR),
    ("TFN 999 999 999", p.AU_TFN),
])
def test_national_identifier_rejected(text: str, kind: str) -> None:
    assert found(text, kind) == []


def test_url_and_domain() -> None:
    text = "see https://example.com/a?b=1. and www.foo.org, or github.com"
    assert found(text, p.URL) == ["https://example.com/a?b=1", "www.foo.org"]
    assert found(text, p.DOMAIN_NAME) == ["github.com"]


@pytest.mark.parametrize("text", ["self.app.run()", "edit main.rs and setup.py", "os.path.join", "obj.com()"])
def test_code_is_not_a_domain(text: str) -> None:
    assert found(text, p.DOMAIN_NAME) == [] and found(text, p.URL) == []


@pytest.mark.parametrize("text, value", [
    ("San Jose, CA 95131", "95131"),
    ("zip code 02139-4307", "02139-4307"),
])
def test_zip_found(text: str, value: str) -> None:
    assert found(text, p.ZIP_CODE) == [value]


@pytest.mark.parametrize("text", ["we sold 12345 units", "$12345", "12345.67"])
def test_zip_rejected(text: str) -> None:
    assert found(text, p.ZIP_CODE) == []


def test_driver_license_needs_context() -> None:
    assert found("my driver's license number is D1234567", p.US_DRIVER_LICENSE) == ["D1234567"]
    assert found("DL# 123456789", p.US_DRIVER_LICENSE) == ["123456789"]
    assert found("the part D1234567 is in stock", p.US_DRIVER_LICENSE) == []


def test_email_domain_is_one_entity() -> None:
    entities = merge_overlapping(p.recognize("mail ann@acme.com"))
    assert [(e.type, e.start, e.end) for e in entities] == [(p.EMAIL_ADDRESS, 5, 17)]


def test_offsets_are_code_points() -> None:
    text = "😀 Ünïcødé ✓ SSN 123-45-6789 ✓"
    [value] = found(text, p.US_SSN)
    assert value == "123-45-6789"
