"""API errors of billing, rendered through relay.api.errors' envelope.

`to_api_error(exc)` maps the service exceptions the runner sees (BudgetExceeded, UnknownModel,
LedgerUnavailable) to these, so every endpoint answers them the same way.
"""

from rest_framework import exceptions, status


class BudgetExceededError(exceptions.APIException):
    status_code = status.HTTP_402_PAYMENT_REQUIRED
    default_detail = "A budget covering this request is used up."
    default_code = "budget_exceeded"


class LedgerUnavailableError(exceptions.APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_detail = "The budget ledger is unavailable, so the request cannot be checked; try again shortly."
    default_code = "ledger_unavailable"


class UnknownModelError(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_detail = "No price is configured for this model."
    default_code = "unknown_model"


def to_api_error(exc: Exception) -> exceptions.APIException | None:
    from billing.services import BudgetExceeded, LedgerUnavailable, UnknownModel

    if isinstance(exc, BudgetExceeded):
        return BudgetExceededError(exc.message)
    if isinstance(exc, UnknownModel):
        return UnknownModelError(str(exc))
    if isinstance(exc, LedgerUnavailable):
        return LedgerUnavailableError()
    return None


class RateLimitedError(exceptions.Throttled):
    """A key's tokens/minute are used up (429 `rate_limited` with Retry-After)."""

    default_code = "rate_limited"
