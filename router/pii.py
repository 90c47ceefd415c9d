"""PII scrubbing: emails, phone numbers, payment cards (Luhn-checked), IBANs (mod-97 checked)
and API-key-like secrets replaced by typed placeholders (:data:`PLACEHOLDERS`).

Used by the decision log (``decision_log.prompts: redact``, the default: prompts are stored
scrubbed) and by ``harvest`` (training data). The patterns are deliberately conservative about
bare numbers: maths prompts (GSM8K, prices, years, long products) must survive, so a digit run is
only scrubbed when its *shape* (separator layout, ``+`` prefix) or a checksum says it is personal
data.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Mapping

PII_KINDS: tuple[str, ...] = ("secret", "email", "iban", "card", "phone")
PLACEHOLDERS: Mapping[str, str] = {kind: f"[{kind.upper()}]" for kind in PII_KINDS}

_SECRET_PREFIXED = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}"  # OpenAI / Anthropic style (sk-, sk-proj-, sk-ant-)
    r"|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
    r"|\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{30,}"  # GitHub
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAIza[0-9A-Za-z_-]{35}")  # Google API key
# A run of >= 32 hex / base64 / base64url characters, not glued to more of the same.
_SECRET_TOKEN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/_=-])")
_HEX = frozenset("0123456789abcdefABCDEF")
_EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# Country code, check digits, 4-character groups (spaces optional), a 1-3 character tail.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# Contiguous 13-19 digits (not part of a decimal or a longer number), or the printed layouts
# 4-4-4-4[-3] and 4-6-4/5 with one consistent separator.
_CARD = re.compile(
    r"(?<![\d.,])\d{13,19}(?![\d]|[.,]\d)"
    r"|(?<![\d.,-])\d{4}(?P<s>[ -])\d{4}(?P=s)\d{4}(?P=s)\d{4}(?:(?P=s)\d{3})?(?![\d-]|[.,]\d)"
    r"|(?<![\d.,-])\d{4}(?P<t>[ -])\d{6}(?P=t)\d{4,5}(?![\d-]|[.,]\d)")
_PHONE = re.compile(
    # International: +CC then groups (an area code may be bracketed); digit count checked below.
    r"(?<![\w+)])\+\d{1,3}(?:[ .-]?\(\d{1,4}\)|[ .-]?\d{1,4}){2,5}(?![\w])"
    # North American: (555) 123-4567, 555-123-4567, 555.123.4567.
    r"|(?<![\w(.-])(?:\(\d{3}\) ?|\d{3}[.-])\d{3}[.-]\d{4}(?![\w]|[.-]\d)"
    # National trunk prefix 0 with grouped digits: 020 7946 0958, 06 12 34 56 78.
    r"|(?<![\w.,-])0\d{1,4}(?:[ -]\d{2,4}){2,4}(?![\w]|[.,-]\d)")
_HAS_DIGITS = re.compile(r"\d{2}")


def luhn_ok(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (payment card numbers)."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    """Whether ``candidate`` (no spaces, upper case) is 15-34 characters and passes ISO 13616
    mod-97."""
    if not 15 <= len(candidate) <= 34 or not candidate[:2].isalpha():
        return False
    rearranged = candidate[4:] + candidate[:4]
    # Letters count as 10..35; int() of the digit string is exact (Python big integers).
    return int("".join(str(int(char, 36)) for char in rearranged)) % 97 == 1


def _secret_token(token: str) -> bool:
    """A 32+ character token that looks random rather than like a word, path or number."""
    body = token.rstrip("=")
    has_digit = any(c.isdigit() for c in body)
    if all(c in _HEX for c in body):
        # Hex digests and keys mix digits and letters; a bare 32+ digit number is maths.
        return has_digit and any(c.isalpha() for c in body)
    # Random base64 has digits and about as many upper- as lower-case letters; words, paths
    # (several slashes) and CamelCase identifiers (mostly lower case) do not. A 32-character
    # random token fails the 20 % case share about once in a thousand.
    upper = sum(c.isupper() for c in body)
    lower = sum(c.islower() for c in body)
    letters = upper + lower
    return (has_digit and letters > 0 and min(upper, lower) >= 0.2 * letters
            and body.count("/") <= max(1, len(body) // 32))


def _sub_secret_prefixed(match: re.Match[str]) -> str | None:
    token = match.group()
    # "sk-learn-compatible-estimators" is prose; real keys carry digits.
    if token.startswith("sk-") and not any(c.isdigit() for c in token):
        return None
    return PLACEHOLDERS["secret"]


def _sub_secret_token(match: re.Match[str]) -> str | None:
    return PLACEHOLDERS["secret"] if _secret_token(match.group()) else None


def _sub_email(match: re.Match[str]) -> str | None:
    return PLACEHOLDERS["email"]


def _sub_iban(match: re.Match[str]) -> str | None:
    # The pattern may have run on into a following upper-case word ("... 00 AND"): keep the
    # longest prefix of space-separated pieces that is a valid IBAN.
    pieces = match.group().split(" ")
    for end in range(len(pieces), 0, -1):
        if iban_ok("".join(pieces[:end])):
            rest = " ".join(pieces[end:])
            return PLACEHOLDERS["iban"] + (" " + rest if rest else "")
    return None


def _sub_card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"[ -]", "", match.group())
    # Issuer prefixes 2-6 (Mastercard 2/5, Amex/Diners 3, Visa 4, Discover 6): together with
    # Luhn this keeps most long maths numbers (1 in 10 pass Luhn alone) intact.
    if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits):
        return PLACEHOLDERS["card"]
    return None


def _sub_phone(match: re.Match[str]) -> str | None:
    text = match.group()
    digits = sum(c.isdigit() for c in text)
    if text.startswith("+"):
        return PLACEHOLDERS["phone"] if 8 <= digits <= 15 else None  # E.164: at most 15
    if text.startswith("0") and not 9 <= digits <= 11:
        return None
    return PLACEHOLDERS["phone"]


# Order matters: secrets first (a token may hold digit runs), IBANs before cards and phones
# (an IBAN holds digit groups), cards before phones (a grouped card looks like a phone).
_RULES: tuple[tuple[str, re.Pattern[str], Callable[[re.Match[str]], str | None], bool], ...] = (
    ("secret", _SECRET_PREFIXED, _sub_secret_prefixed, False),
    ("secret", _SECRET_TOKEN, _sub_secret_token, False),
    ("email", _EMAIL, _sub_email, False),
    ("iban", _IBAN, _sub_iban, True),
    ("card", _CARD, _sub_card, True),
    ("phone", _PHONE, _sub_phone, True),
)


def scrub_pii(text: str) -> tuple[str, Counter[str]]:
    """``text`` with personal data and secrets replaced by placeholders, and the count of
    replacements by kind (keys of :data:`PLACEHOLDERS`; kinds with no hit are absent)."""
    counts: Counter[str] = Counter()
    has_digits = _HAS_DIGITS.search(text) is not None
    for kind, pattern, replace, needs_digits in _RULES:
        if needs_digits and not has_digits:
            continue
        if kind == "email" and "@" not in text:
            continue

        def substitute(match: re.Match[str], kind: str = kind,
                       replace: Callable[[re.Match[str]], str | None] = replace) -> str:
            replacement = replace(match)
            if replacement is None:
                return match.group()
            counts[kind] += 1
            return replacement

        text = pattern.sub(substitute, text)
    return text, counts
