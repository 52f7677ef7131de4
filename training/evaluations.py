"""Evaluation reads and rules: parsing an uploaded set, a version's items, the comparison. No writes.

A target is a model name as the OpenAI-compatible API takes it: a ModelEndpoint name, or
`relay-<agent>` for one of Relay's agents on its default model. Routing settings (strategy,
deployments, fallbacks) live on the ModelEndpoint, so comparing two routing settings is
comparing two model names configured differently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db.models import QuerySet

from agents.providers.catalog import resolve
from agents.registry import all_agents
from billing.money import decimal_text
from training import services, storage
from training.evaluation_scoring import EXACT, F1, histogram, percentile
from training.models import DatasetVersion
from training.models_evaluation import Evaluation, EvaluationResult

MAX_ITEMS = 5000  # an upload's lines, a version's rows taken
MAX_PROMPT_CHARS = 20_000
MAX_REFERENCE_CHARS = 20_000
MAX_TARGETS = 8
AGENT_PREFIX = "relay-"  # as agents.api.openai_api names agents among models
ITEM_FIELDS = {"prompt", "reference", "agent", "id"}


class SetError(ValueError):
    """An evaluation set that cannot be made; the message names the line when there is one."""


@dataclass(frozen=True)
class ItemData:
    position: int
    prompt: str
    reference: str | None = None
    agent: str = ""
    external_id: str = ""


def max_upload_bytes() -> int:
    return settings.RELAY_MAX_UPLOAD_BYTES


def _unstorable(text: str) -> bool:
    """JSON escapes decode to characters no database text holds: NUL, and surrogates without their pair."""
    if "\x00" in text:
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _line_item(number: int, line: str) -> ItemData:
    def problem(text: str) -> SetError:
        return SetError(f"Line {number}: {text}")

    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise problem(f"not valid JSON ({error.msg} at column {error.colno}).") from None
    except RecursionError:
        raise problem("not valid JSON (nested too deeply).") from None
    if not isinstance(value, dict):
        raise problem("each line must be a JSON object with a \"prompt\".")
    unknown = sorted(set(value) - ITEM_FIELDS)
    if unknown:
        raise problem(f"unknown field(s) {', '.join(unknown)}; allowed: agent, id, prompt, reference.")
    for name, text in value.items():
        if isinstance(text, str) and _unstorable(text):
            raise problem(f"\"{name}\" holds a NUL character or a lone surrogate (\\u0000, \\ud800): not text.")
    prompt = value.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise problem("\"prompt\" must be a non-empty string.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise problem(f"\"prompt\" is longer than {MAX_PROMPT_CHARS} characters.")
    reference = value.get("reference")
    if reference is not None and not isinstance(reference, str):
        raise problem("\"reference\" must be a string when given.")
    if reference is not None and len(reference) > MAX_REFERENCE_CHARS:
        raise problem(f"\"reference\" is longer than {MAX_REFERENCE_CHARS} characters.")
    agent = value.get("agent")
    if agent is not None and (not isinstance(agent, str) or agent not in all_agents()):
        raise problem(f"unknown agent {agent!r}.")
    external_id = value.get("id")
    if external_id is not None and not isinstance(external_id, str | int):
        raise problem("\"id\" must be a string or an integer.")
    if external_id is not None and len(str(external_id)) > 200:
        raise problem("\"id\" is longer than 200 characters.")
    return ItemData(position=number, prompt=prompt, reference=reference, agent=agent or "",
                    external_id="" if external_id is None else str(external_id))


def parse_upload(data: bytes) -> list[ItemData]:
    """The items of an uploaded JSONL file, validated line by line (SetError names the first bad line)."""
    if len(data) > max_upload_bytes():
        raise SetError(f"The file is larger than {max_upload_bytes()} bytes.")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[:error.start].count(b"\n") + 1
        raise SetError(f"Line {line}: not UTF-8 text.") from None
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) are not items
        if len(items) >= MAX_ITEMS:
            raise SetError(f"Line {number}: the file has more than {MAX_ITEMS} items.")
        items.append(_line_item(number, line))
    if not items:
        raise SetError("The file is empty: it needs one JSON object per line, each with a \"prompt\".")
    return items


def version_items(version: DatasetVersion) -> list[ItemData]:
    """A built version's rows as items: the question before each answer, the answer as its reference."""
    services.downloadable(version)  # NotDownloadable: not built, or withdrawn; ConsentRequired: consent off
    items = []
    with open(storage.path(version.file_name), encoding="utf-8") as source:
        for row in map(json.loads, source):
            turns = row["messages"]
            question = next((t["content"] for t in reversed(turns[:-1]) if t["role"] == "user"), "")
            if not question.strip():
                continue
            items.append(ItemData(position=len(items) + 1, prompt=question[:MAX_PROMPT_CHARS],
                                  reference=turns[-1]["content"][:MAX_REFERENCE_CHARS] or None,
                                  agent=row.get("agent") or "", external_id=row["id"]))
            if len(items) >= MAX_ITEMS:
                break
    if not items:
        raise SetError("This version has no rows with a question: nothing to evaluate.")
    return items


def target_problem(target: str) -> str | None:
    """Why a target cannot be evaluated, or None."""
    if target.startswith(AGENT_PREFIX) and target[len(AGENT_PREFIX):] in all_agents():
        return None
    if resolve(target) is None:
        return f"Unknown model {target!r}: a model name (GET /v1/models) or relay-<agent>."
    return None


def run_of(target: str, default_agent: str, item_agent: str) -> tuple[str, str | None]:
    """(agent, model) a target runs an item with: relay-<agent> picks the agent on its default model."""
    if target.startswith(AGENT_PREFIX) and target[len(AGENT_PREFIX):] in all_agents():
        return target[len(AGENT_PREFIX):], None
    return item_agent or default_agent, target


# --- the comparison ----------------------------------------------------------------------------


def _money(value: Decimal | None) -> str | None:
    return None if value is None else decimal_text(value)


def _target_figures(results: list[EvaluationResult], items_total: int) -> dict:
    answered = [r for r in results if r.status == "complete"]
    scores = [r.quality_score for r in answered if r.quality_score is not None]
    latencies = [r.latency_ms for r in results if r.latency_ms is not None]
    exact = [r.agreement for r in results if r.agreement_kind == EXACT and r.agreement is not None]
    f1 = [r.agreement for r in results if r.agreement_kind == F1 and r.agreement is not None]
    cost = sum((r.cost for r in results), Decimal(0))
    return {
        "items": items_total, "finished": len(results), "complete": len(answered),
        "statuses": {status: sum(1 for r in results if r.status == status)
                     for status in sorted({r.status for r in results})},
        "quality": {"mean": round(sum(scores) / len(scores), 6) if scores else None,
                    "p50": percentile(scores, 0.5), "count": len(scores), "histogram": histogram(scores)},
        "agreement": {"exact_match": round(sum(exact) / len(exact), 6) if exact else None,
                      "exact_scored": len(exact),
                      "f1": round(sum(f1) / len(f1), 6) if f1 else None, "f1_scored": len(f1)},
        "latency_ms": {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)},
        "cost": {"total": _money(cost), "per_item": _money(cost / len(results)) if results else None},
    }


def comparison(evaluation: Evaluation) -> dict:
    """Per target, side by side: quality distribution, agreement, latency, cost; what finished of what."""
    results: dict[str, list[EvaluationResult]] = {target: [] for target in evaluation.targets}
    for result in evaluation.results.all().order_by("item__position", "target"):
        results.setdefault(result.target, []).append(result)
    items_total = evaluation.evaluation_set.items_count
    return {
        "evaluation": evaluation.pk, "evaluation_set": evaluation.evaluation_set_id, "state": evaluation.state,
        "stopped_by_budget": evaluation.stopped_by_budget, "message": evaluation.message,
        "finished": evaluation.processed, "total": evaluation.total,
        "targets": [{"target": target, **_target_figures(found, items_total)} for target, found in results.items()],
    }


def comparison_table(report: dict) -> str:
    """The comparison as a plain-text table (manage.py run_evaluation)."""
    header = ["target", "finished", "quality mean", "quality p50", "exact match", "F1", "p50 ms", "p95 ms",
              "cost", "cost/item"]
    rows = [header]

    def show(value, digits=3):
        if value is None:
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    for target in report["targets"]:
        rows.append([target["target"], f"{target['finished']}/{target['items']}",
                     show(target["quality"]["mean"]), show(target["quality"]["p50"]),
                     show(target["agreement"]["exact_match"]), show(target["agreement"]["f1"]),
                     show(target["latency_ms"]["p50"]), show(target["latency_ms"]["p95"]),
                     show(target["cost"]["total"]), show(target["cost"]["per_item"])])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    status = f"{report['state']}: {report['finished']} of {report['total']} runs finished"
    if report["message"]:
        status += f" ({report['message']})"
    return "\n".join([*lines, status])


def results_of(evaluation: Evaluation) -> QuerySet:
    return evaluation.results.select_related("item").order_by("item__position", "target")
