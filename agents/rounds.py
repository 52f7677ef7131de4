"""A tool round is admitted and reserved before it is sent.

Each model call after the first sends the whole conversation again (the question, the model's tool
calls, the tools' outputs) and may write `max_tokens` more: a run of five rounds can cost several
times what its first reservation held, and draw as many tokens from its key's minute. Before each
further round the run counts the round's prompt as input and the arguments the model wrote in its
tool calls as output, takes the round's tokens from the key's tokens/minute (billing.ratelimit,
as the first round's were), and grows its reservation to what it used plus the round's worst case
(billing.services.extend_charge). A hard budget without room for the round ends the run as a
budget stop before the round is sent, a spent minute as `rate_limited`; the record then bills the
rounds that were sent.
"""

from __future__ import annotations

from agents.providers.base import ProviderError
from billing import ratelimit
from billing import services as billing
from billing.api.errors import LedgerUnavailableError, RateLimitedError


async def reserve_round(run, progress, input_tokens: int, call_tokens: int) -> None:
    """Count, admit and reserve the next round of `run` (agents.upstream's `before_round`).

    The calls were written, so they are billed whether or not the round is sent; its prompt only once it is.
    """
    run.call_tokens += call_tokens
    try:
        await ratelimit.admit(run.request.api_key, input_tokens, run.max_tokens)
        await billing.extend_charge(run.charge, input_tokens=run.input_tokens + input_tokens,
                                    output_tokens=progress.output_tokens + run.call_tokens,
                                    max_output_tokens=run.max_tokens)
    except RateLimitedError as limited:
        raise ProviderError("rate_limited", str(limited.detail), 429) from None
    except (billing.LedgerUnavailable, LedgerUnavailableError):
        raise ProviderError("ledger_unavailable", "The budget ledger is unavailable; try again shortly.", 503) from None
    run.input_tokens += input_tokens
