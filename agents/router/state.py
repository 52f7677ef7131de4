"""The process's routing state (`get_state`): Redis when settings.REDIS_URL is set, else in-process.

The interface, its rules and the in-process state are in agents.router.state_base, the Redis one in
agents.router.state_redis (the layering of billing's ledger).
"""

from __future__ import annotations

import threading

from django.conf import settings

from agents.router.state_base import InProcessState, RouterState
from relay import redis_clients


def key_prefix() -> str:
    return redis_clients.key_prefix("router")


_state: RouterState | None = None
_state_lock = threading.Lock()


def get_state() -> RouterState:
    global _state
    with _state_lock:
        if _state is None:
            if settings.REDIS_URL:
                from agents.router.state_redis import RedisState

                _state = RedisState(redis_clients.current(), key_prefix())
            else:
                _state = InProcessState()
        return _state


def set_state(state: RouterState | None) -> RouterState | None:
    """Install `state` as the process's (tests); returns the previous one."""
    global _state
    with _state_lock:
        previous, _state = _state, state
        return previous
