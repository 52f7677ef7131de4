"""The agents' label values for relay.observability.metrics (registered by AgentsConfig.ready).

Labels stay bounded: an agent, tool or model Relay does not know is counted as "other", and what
Relay knows is registered here rather than imported by relay/ (which imports no app).
"""

from agents.providers.catalog import available_models
from agents.registry import all_agents
from agents.router import metrics as router_metrics
from relay.observability import metrics


def agent_names():
    return all_agents()  # a dict keyed by agent name: cheap, read per run


def tool_names():
    return (tool.name for agent in all_agents().values() for tool in agent.tools)


def served_models():
    return (choice.name for choice in available_models())


def register() -> None:
    metrics.register_label_values("agent_type", agent_names)
    metrics.register_label_values("tool_name", tool_names)
    metrics.register_label_values("model", served_models)
    router_metrics.register()  # the per-deployment metrics and their scrape-time cooldown gauge
