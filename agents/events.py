"""The streaming protocol of docs/design.md section 6: one dict per event.

Agent runs yield these; SSE writes each as one `data:` line, the WebSocket as one text frame,
and the non-streaming API collects them. Build events only through these functions so the
field names stay exactly those of the contract.
"""

import json
from decimal import Decimal

from billing.money import decimal_text


def utf8_json(payload) -> bytes:
    """`payload` as JSON in UTF-8, as a frame carries it: each character as itself, unless a string
    holds a lone surrogate (a model's JSON may escape one, and Python decodes it to a str with no
    UTF-8 form): then escaped, as the model sent it, where encoding it would have cut the stream."""
    try:
        return json.dumps(payload, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(payload).encode()


def start(conversation_id, message_id, agent: str, model: str) -> dict:
    return {"type": "start", "conversation_id": conversation_id, "message_id": message_id,
            "agent": agent, "model": model}


def token(content: str) -> dict:
    return {"type": "token", "content": content}


def tool_call(call_id: str, tool: str, status: str, *, input=None, output=None, duration_ms=None, data=None) -> dict:
    """data: what the browser shows beside the answer (search_documents: the cited passages)."""
    event = {"type": "tool_call", "call_id": call_id, "tool": tool, "status": status}
    if input is not None:
        event["input"] = input
    if output is not None:
        event["output"] = output
    if duration_ms is not None:
        event["duration_ms"] = duration_ms
    if data is not None:
        event["data"] = data
    return event


def usage(input_tokens: int, output_tokens: int, cost: Decimal, model: str) -> dict:
    """model: the one that answered and was priced (not the one asked for, when a fallback answered)."""
    return {"type": "usage", "input_tokens": input_tokens, "output_tokens": output_tokens, "cost": decimal_text(cost),
            "model": model}


def error(code: str, message: str) -> dict:
    return {"type": "error", "code": code, "message": message}


def done(status: str, total_tokens: int, cost: Decimal) -> dict:
    return {"type": "done", "status": status, "total_tokens": total_tokens, "cost": decimal_text(cost)}
