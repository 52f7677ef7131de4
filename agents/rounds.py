"""The rounds of a model call: what each may write, and what each costs, before the next.

Each model call after the first sends the whole conversation again (the question, the model's tool
calls, the tools' outputs) and may write `max_tokens` more: a run of five rounds can cost several
times what its first reservation held, and draw as many tokens from its key's minute. So:

- A round is asked for no more output than a hard budget still has room for (`max_tokens`): the
  budget's per-token check sees only answer text, and a model writing tool-call arguments (or
  thinking) would otherwise spend past the limit at the upstream, unbilled past the grant.
- The calls a round wrote are billed as soon as its stream ends (`calls_written`), before any is
  handed to the client or run: a client that leaves while a tool runs, or that runs the calls
  itself, has had that work. Past a hard budget they are neither handed over nor run.
- Before each further round (`before`), its prompt is taken from the key's tokens/minute
  (billing.ratelimit, as the first round's was) and the reservation grown to what was used plus the
  round's worst case (billing.services.extend_charge). A hard budget without room ends the run as a
  budget stop before the round is sent, a spent minute as `rate_limited`; the record then bills the
  rounds that were sent.
"""

from __future__ import annotations

from agents.providers.base import ProviderError
from billing import ratelimit
from billing import services as billing
from billing.api.errors import LedgerUnavailableError, RateLimitedError


class BudgetStop(Exception):
    """The run reached its hard budget: it ends as `budget_stop` (agents.runner)."""

    def __init__(self, message: str = ""):
        super().__init__(message)
        self.message = message


class Rounds:
    """agents.upstream's view of one run's budget, round by round."""

    def __init__(self, run, progress):
        self.run, self.progress = run, progress
        self.capped = False  # the latest round was asked for less than the run's max_tokens

    def _output_so_far(self) -> int:
        return self.progress.output_tokens + self.run.call_tokens

    def max_tokens(self) -> int:
        """The output the next round may write: the run's max_tokens, or less where a hard budget ends first."""
        charge, wanted = self.run.charge, self.run.max_tokens
        price = charge.output_nanos_per_token if charge is not None else 0
        if charge is None or charge.granted_nanos == billing.UNLIMITED or price <= 0:
            self.capped = False
            return wanted
        room = (charge.granted_nanos - charge.cost_nanos(self.run.input_tokens, self._output_so_far())) // price
        self.capped = room < wanted
        return max(1, min(wanted, room))

    def calls_written(self, call_tokens: int, finish_reason: str | None) -> None:
        """Bill the calls a round wrote; BudgetStop if they are cut short by, or pass, a hard budget."""
        self.run.call_tokens += call_tokens
        if (self.capped and finish_reason == "length") or not self.run.charge.allows(
                self.run.input_tokens, self._output_so_far()):
            raise BudgetStop()

    def calls_cut_short(self, streamed_tokens: int) -> None:
        """Bill the tool-call chunks a round streamed before it was cut (no call completed to count)."""
        self.run.call_tokens += streamed_tokens

    def text_cut_by_budget(self, finish_reason: str | None) -> bool:
        """The round's answer stopped where the budget let it, not where the model would have."""
        return self.capped and finish_reason == "length"

    async def before(self, input_tokens: int) -> None:
        """Admit and reserve the next round, whose prompt is `input_tokens`; counted once it is."""
        run = self.run
        try:
            await ratelimit.admit(run.request.api_key, input_tokens, run.max_tokens)
            await billing.extend_charge(run.charge, input_tokens=run.input_tokens + input_tokens,
                                        output_tokens=self._output_so_far(), max_output_tokens=run.max_tokens)
        except RateLimitedError as limited:
            raise ProviderError("rate_limited", str(limited.detail), 429) from None
        except (billing.LedgerUnavailable, LedgerUnavailableError):
            raise ProviderError("ledger_unavailable", "The budget ledger is unavailable; try again shortly.",
                                503) from None
        run.input_tokens += input_tokens
