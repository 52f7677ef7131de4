"""Personal data and secrets taken out of text before anything is written to a dataset.

One left-to-right pass of one pattern: at each position the first alternative that matches
wins, so a long digit run is judged once as a card (Luhn) and, when it is not one, left whole
instead of being taken apart by the phone rules; keys are matched before the digits they hold.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

KINDS = ("email", "phone", "card", "ipv4", "ipv6", "relay_key", "openai_key", "anthropic_key", "aws_key",
         "github_token", "slack_token")

_PATTERN = re.compile(r"""
    (?P<anthropic_key>(?<![\w-])sk-ant-[A-Za-z0-9_-]{8,})
  | (?P<openai_key>(?<![\w-])sk-[A-Za-z0-9_-]{16,})
  | (?P<relay_key>(?<![\w-])rk_[A-Za-z0-9_-]{8,})
  | (?P<aws_key>(?<![A-Za-z0-9])(?:AKIA|ASIA)[0-9A-Z]{16}(?![A-Za-z0-9]))
  | (?P<github_token>(?<![\w-])gh[pousr]_[A-Za-z0-9]{20,})
  | (?P<slack_token>(?<![\w-])xox[abposr]-[A-Za-z0-9-]{8,})
  | (?P<email>(?<![\w.+-])\w[\w.%+-]*@[^\W_](?:[\w-]*[^\W_])?(?:\.[^\W_](?:[\w-]*[^\W_])?)*\.[^\W\d_]{2,})
  | (?P<ipv6>(?<![\w:.])(?=[0-9A-Fa-f:.]*::|(?:[0-9A-Fa-f]{1,4}:){2})[0-9A-Fa-f:]*:[0-9A-Fa-f:]*(?:\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})?(?:%[\w.]+)?(?![\w:]|\.\d))
  | (?P<ipv4>(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d))
  | (?P<date>(?<![\w.+-])(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.-]\d{1,2}[/.-]\d{4})(?![\w]|[.-]\d))
  | (?P<digits>(?<![\w.+])\d(?:[ -]?\d){12,18}(?![\w]|[ -]\d))
  | (?P<longrun>(?<![\w.])\d{20,})
  | (?P<phone>
        (?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){1,6}(?!\w)
      | (?<![\w.+(])(?:\(\d{2,5}\)[ .-]?|\d{2,5}[ .-])\d{2,6}(?:[ .-]\d{2,4}){0,3}(?![\w]|[.-]\d)
      | (?<![\w.+])0\d{8,10}(?!\w)
    )
""", re.VERBOSE)


def luhn_ok(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _token(kind: str) -> str:
    return f"[REDACTED_{kind.upper()}]"


def _judge(match: re.Match) -> tuple[str | None, str]:
    """(kind redacted or None, replacement text)."""
    kind, text = match.lastgroup, match.group()
    if kind == "digits":
        digits = re.sub(r"\D", "", text)
        return ("card", _token("card")) if luhn_ok(digits) else (None, text)
    if kind in ("longrun", "date"):
        return None, text
    if kind == "phone":
        count = sum(char.isdigit() for char in text)
        return ("phone", _token("phone")) if 7 <= count <= 15 else (None, text)
    if kind == "ipv4":
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            return None, text
    if kind == "ipv6":
        address = text.split("%", 1)[0]
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return None, text
        if not any(char.isdigit() or char in "abcdefABCDEF" for char in address):
            return None, text  # "::" alone is punctuation more often than an address
    return kind, _token(kind)


def redact(text: str, counts: Counter | None = None) -> str:
    """text with every finding replaced by [REDACTED_<KIND>]; counts (if given) gains one per finding."""
    if not text:
        return text

    def replace(match: re.Match) -> str:
        kind, replacement = _judge(match)
        if kind is not None and counts is not None:
            counts[kind] += 1
        return replacement

    return _PATTERN.sub(replace, text)
