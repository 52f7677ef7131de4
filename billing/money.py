"""Money arithmetic: Decimal USD in the database, integer nano-dollars in counters. Never float."""

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation

NANOS_PER_USD = 1_000_000_000
# Lua numbers in the Redis ledger are doubles: integers are exact only below 2**53 nano-dollars
# (about $9M), so a single budget limit stays well under it.
MAX_LIMIT_USD = Decimal("1000000")
MAX_DECIMAL_PLACES = 10
_NANO = Decimal(1) / NANOS_PER_USD


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


def parse_amount(value, *, field: str, allow_zero: bool, maximum: Decimal | None = None) -> Decimal:
    """A user-supplied money amount, or ValueError with a message naming the problem.

    Parses str(value) so a JSON float becomes the decimal the client wrote, not its binary
    approximation. Refuses booleans, NaN/Infinity, negatives, amounts above `maximum` and more
    than 10 decimal places (the database column's scale: more would be silently rounded).
    """
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise ValueError(f"{field} must be a decimal number.")
    try:
        amount = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        raise ValueError(f"{field} must be a decimal number, not {str(value)[:40]!r}.")
    if not amount.is_finite():
        raise ValueError(f"{field} must be a finite number.")
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValueError(f"{field} must be greater than 0." if not allow_zero else f"{field} must not be negative.")
    if maximum is not None and amount > maximum:
        raise ValueError(f"{field} must be at most {maximum}.")
    if amount.normalize().as_tuple().exponent < -MAX_DECIMAL_PLACES:  # trailing zeros do not count
        raise ValueError(f"{field} has more than {MAX_DECIMAL_PLACES} decimal places.")
    return amount
