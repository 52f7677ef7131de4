"""One module per agent; importing this package registers them all (see agents/registry.py)."""

from agents.kinds import code, general, math, rag, vision  # noqa: F401
