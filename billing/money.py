"""Money arithmetic: Decimal USD in the database, integer nano-dollars in counters. Never float.

Money leaves Relay in two shapes only: `decimal_text` for machines (API payloads, events, audit
metadata, form values) and `format_usd` for people (pages, messages). static/js/console.js has
`Relay.usd`, the same display rule; tests/billing/test_money_display.py runs both on one table.
"""

import re
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal

NANOS_PER_USD = 1_000_000_000
# Lua numbers in the Redis ledger are doubles: integers are exact only below 2**53 nano-dollars
# (about $9M), so a single budget limit stays well under it.
MAX_LIMIT_USD = Decimal("1000000")
# Amounts from outside are whole nano-dollars, the ledger's unit: 9 decimal places at most.
MAX_DECIMAL_PLACES = 9
_NANO = Decimal(1) / NANOS_PER_USD
# ASCII decimal notation only. Decimal() also reads other scripts' digits ("٥" is 5, "５" too)
# and underscores ("1_000"), which nobody types as money on purpose.
_AMOUNT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MAX_AMOUNT_CHARS = 64


def cost_usd(nanos: int) -> Decimal:
    """Nano-dollars as an exact Decimal USD amount (9 decimal places)."""
    return (Decimal(int(nanos)) * _NANO).quantize(_NANO)


def usd_to_nanos(amount: Decimal, *, round_up: bool = False) -> int:
    """USD to nano-dollars; budget limits round down (never allow more than the limit)."""
    rounding = ROUND_CEILING if round_up else ROUND_FLOOR
    return int((Decimal(amount) * NANOS_PER_USD).to_integral_value(rounding=rounding))


def nanos_per_token(usd_per_1k: Decimal) -> int:
    """Price of one token in nano-dollars, rounded up so Relay never under-charges a token."""
    return int((Decimal(usd_per_1k) * NANOS_PER_USD / 1000).to_integral_value(rounding=ROUND_CEILING))


def parse_amount(value, *, field: str, allow_zero: bool, maximum: Decimal = MAX_LIMIT_USD) -> Decimal:
    """A money amount from outside, exact to the nano-dollar, or ValueError naming the problem.

    The one rule for money Relay is given (the cost API, the admin's forms, the models'
    validators). Parses str(value) so a JSON float becomes the decimal the client wrote, not its
    binary approximation. Refuses booleans, anything but ASCII decimal notation (an exponent is
    fine), NaN/Infinity, negatives, amounts above `maximum`, and amounts below or finer than one
    nano-dollar: the ledger counts whole nano-dollars, so 1e-10 would be a limit of nothing and
    10.0000000005 would lose its tail without a word.
    """
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise ValueError(f"{field} must be a decimal number.")
    text = str(value).strip()
    if not text:
        raise ValueError(f"{field} must be a decimal number.")
    if len(text) > _MAX_AMOUNT_CHARS or not _AMOUNT.fullmatch(text):
        raise ValueError(f"{field} must be a decimal number in ASCII digits, like 10.00, not {text[:40]!r}.")
    amount = Decimal(text)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValueError(f"{field} must be greater than 0." if not allow_zero else f"{field} must not be negative.")
    if amount > maximum:
        raise ValueError(f"{field} must be at most {maximum}.")
    if 0 < amount < _NANO:
        raise ValueError(f"{field} is below one nano-dollar (0.000000001).")
    if _finer_than_nanos(amount):
        raise ValueError(f"{field} has more than {MAX_DECIMAL_PLACES} decimal places (finer than a nano-dollar).")
    return abs(amount).quantize(_NANO)  # abs: "-0" is 0


def _finer_than_nanos(amount: Decimal) -> bool:
    """Exact, whatever the exponent: no Decimal context (and so no rounding) involved."""
    _, digits, exponent = amount.as_tuple()
    cut = -exponent - MAX_DECIMAL_PLACES  # trailing digits that must be zero
    return cut > 0 and any(digits[-cut:])


def decimal_text(value) -> str:
    """A money amount as plain decimal text: no exponent, no needless trailing zeros.

    str(Decimal) gives "0E-9" for a quantized zero and "12.5000000000" for a column value;
    clients get "0", "12.5" and "0.000123". None and "" are zero.
    """
    amount = Decimal(0) if value in (None, "") else Decimal(str(value))
    if not amount.is_finite():
        raise ValueError(f"Not an amount: {value!r}")
    if amount == 0:
        return "0"  # "-0" and "0E-9" alike
    text = format(amount, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


# The display rule: two decimals from one cent up; below it, as many decimals as it takes to
# show two significant digits, so an amount that is not zero never reads "$0.00".
SIGNIFICANT_BELOW_A_CENT = 2
_CENT = Decimal("0.01")


def format_usd(value) -> str:
    """A money amount for people: "$12.50", "$1,234.00", "$0.0004", "$0.000012", "$0.00" for zero."""
    amount = Decimal(decimal_text(value))
    sign, amount = ("-" if amount < 0 else ""), abs(amount)
    if amount == 0 or amount >= _CENT:
        return f"{sign}${amount.quantize(_CENT, rounding=ROUND_HALF_UP):,f}"
    # adjusted(): the power of ten of the first significant digit (0.00042 -> -4).
    places = -amount.adjusted() + SIGNIFICANT_BELOW_A_CENT - 1
    shown = amount.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    text = format(shown, "f").rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"{sign}${whole}.{fraction.ljust(2, '0')}"
