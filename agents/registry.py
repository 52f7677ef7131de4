"""The agent registry: `register` an Agent subclass (one module in agents/kinds/) and it exists."""

from accounts import key_tree
from accounts.permissions import AUTHENTICATED, holds
from accounts.roles import AGENT_PERMISSIONS

_AGENTS: dict = {}


def register(cls):
    if cls.name not in AGENT_PERMISSIONS:
        raise ValueError(f"agent {cls.name!r} needs an entry in accounts.roles.AGENT_PERMISSIONS")
    _AGENTS[cls.name] = cls()
    return cls


def all_agents() -> dict:
    import agents.kinds  # noqa: F401  (registers the agents on first use)

    return _AGENTS


def get_agent(name: str):
    return all_agents().get(name)


def may_use(user, api_key, agent_name: str) -> bool:
    """Permission for the agent, and for a key also its allow-list."""
    if agent_name not in all_agents():
        return False
    if not key_tree.permits(api_key, "allowed_agents", agent_name):
        return False
    permission = AGENT_PERMISSIONS[agent_name]
    return holds(user, api_key, permission or AUTHENTICATED)
