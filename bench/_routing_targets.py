"""bench/routing.py's pieces: the three fake deployments, and the same model on Relay and on LiteLLM Proxy."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import _litellm  # noqa: I001  (bench-local helpers)
import httpx
from _litellm import wait_http
from _relay import ROOT, RelayInstance, free_port

MODEL, FALLBACK = "bench-routed", "bench-fallback"
DEPLOYMENTS = ("healthy", "slow", "failing")
# Relay's strategy names (agents.models.ModelEndpoint.routing_strategy) -> LiteLLM's routing_strategy.
STRATEGIES = {"least_busy": "least-busy", "lowest_latency": "latency-based-routing",
              "weighted_random": "simple-shuffle"}


@dataclass(frozen=True)
class Settings:
    strategy: str = "least_busy"
    allowed_fails: int = 3          # a deployment's 3rd failure within the window opens its cooldown
    cooldown: int = 5               # seconds
    retries: int = 2                # further attempts on the model's deployments before the fallback
    tokens: int = 20                # words per answer
    tps: float = 200                # tokens per second after the first
    ttft: float = 0.02              # healthy (and failing, once healed) time to first token
    slow_ttft: float = 0.4


class Upstream:
    """One fake deployment (tests/support/fake_upstream.py) in its own process, steered by /_control."""

    def __init__(self, name: str, ttft: float, settings: Settings):
        self.name, self.ttft, self.settings = name, ttft, settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(self.port), "--ttft", str(self.ttft),
             "--tps", str(self.settings.tps), "--tokens", str(self.settings.tokens)], cwd=ROOT, stdout=subprocess.DEVNULL)
        wait_http(f"{self.url}/v1/models", timeout=60, process=self.process)

    def stop(self) -> None:
        """Gone: its port refuses connections until start()."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None

    async def control(self, client: httpx.AsyncClient, **config) -> dict:
        return (await client.post(f"{self.url}/_control", json=config)).raise_for_status().json()

    async def stats(self, client: httpx.AsyncClient, since: float) -> dict:
        return (await client.get(f"{self.url}/_control", params={"since": repr(since)})).raise_for_status().json()


def start_upstreams(settings: Settings) -> dict[str, Upstream]:
    ttfts = {"healthy": settings.ttft, "slow": settings.slow_ttft, "failing": settings.ttft}
    upstreams = {name: Upstream(name, ttfts[name], settings) for name in DEPLOYMENTS}
    for upstream in upstreams.values():
        upstream.start()
    return upstreams


# -- Relay ----------------------------------------------------------------------------------------

RELAY_SETUP = """
from decimal import Decimal
from accounts.models import APIKey
from agents.actions.endpoints import create_endpoint
from billing.models import Budget, ModelPrice
for model in {models!r}:
    create_endpoint(model["name"], deployments=model["deployments"], **model["fields"])
    ModelPrice.objects.create(model=model["name"], input_per_1k=Decimal("0.001"), output_per_1k=Decimal("0.002"))
key = APIKey.objects.get()
Budget.objects.create(organization=key.owner.organization, scope="api_key", api_key=key, period="monthly",
                      limit_usd=Decimal("100000"), hard=True, alert_thresholds=[50, 80])
"""


def relay_models(upstreams: dict[str, Upstream], settings: Settings) -> list[dict]:
    """The two models as `agents.actions.endpoints.create_endpoint` takes them (issue 18), fallback first
    (a model's fallbacks must already be served)."""
    return [
        {"name": FALLBACK, "fields": {},
         "deployments": [{"name": "healthy", "base_url": upstreams["healthy"].base_url, "upstream_model": FALLBACK}]},
        {"name": MODEL,
         "fields": {"routing_strategy": settings.strategy, "allowed_fails": settings.allowed_fails,
                    # LiteLLM keeps a deployment's failure count for cooldown_time seconds: the same window.
                    "failure_window_seconds": settings.cooldown, "cooldown_seconds": settings.cooldown,
                    "num_retries": settings.retries, "fallbacks": [FALLBACK]},
         "deployments": [{"name": name, "base_url": upstreams[name].base_url, "upstream_model": MODEL}
                         for name in DEPLOYMENTS]},
    ]


def start_relay(upstreams: dict[str, Upstream], settings: Settings,
                instances: int) -> tuple[RelayInstance, list[subprocess.Popen], list[str]]:
    """`instances` Relay processes (python -m relay.serve) on one database and Redis, each serving the
    models; the first one's RelayInstance (its key, reconcile, stop), the others' processes, every URL."""
    relay = RelayInstance({}, server="relay.serve", extra_env={"RELAY_CACHE_PREFIX": f"rbench{time.time_ns()}"})
    try:
        relay.run_manage("shell", "-c", RELAY_SETUP.format(models=relay_models(upstreams, settings)))
    except subprocess.CalledProcessError as error:
        relay.stop()
        if "create_endpoint" in (error.stderr or ""):
            raise SystemExit("the Relay side needs issue 18's agents.actions.endpoints.create_endpoint "
                             "(models with deployments); run with --only litellm until it is merged") from None
        raise SystemExit(f"setting up Relay's models failed:\n{error.stderr}") from None
    others = [relay.spawn("relay.serve") for _ in range(instances - 1)]
    urls = [relay.url, *(url for _, url in others)]
    for url in urls:  # each process reads the catalog on its own (a few seconds' copy)
        wait_for_model(url, relay.key)
    return relay, [process for process, _ in others], urls


def wait_for_model(url: str, key: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5)
        if listed.status_code == 200 and MODEL in {m["id"] for m in listed.json().get("data", [])}:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{url} does not serve {MODEL}")


# -- LiteLLM Proxy --------------------------------------------------------------------------------

def litellm_config(upstreams: dict[str, Upstream], settings: Settings, redis_url: str | None) -> str:
    """The same two models and router settings for LiteLLM's router (proxy config YAML)."""
    def deployment(model: str, upstream: Upstream) -> str:
        # max_retries 0: the router alone retries (across deployments), as Relay's providers do.
        return (f"  - model_name: {model}\n    litellm_params:\n      model: openai/{model}\n"
                f"      api_base: {upstream.base_url}\n      api_key: unused\n      max_retries: 0\n")

    models = "".join(deployment(MODEL, upstreams[name]) for name in DEPLOYMENTS)
    models += deployment(FALLBACK, upstreams["healthy"])
    # LiteLLM cools a deployment down when its failures exceed allowed_fails (Relay: reach it), and
    # treats its default (3) as unset (percentage rule): allowed_fails - 1 is the same threshold.
    router = (f"  routing_strategy: {STRATEGIES[settings.strategy]}\n  num_retries: {settings.retries}\n"
              f"  allowed_fails: {settings.allowed_fails - 1}\n  cooldown_time: {settings.cooldown}\n"
              f"  fallbacks: [{{\"{MODEL}\": [\"{FALLBACK}\"]}}]\n")
    if redis_url:  # its workers share cooldowns and failure counts, as Relay's instances do
        router += f"  redis_url: \"{redis_url}\"\n"
    return (f"model_list:\n{models}router_settings:\n{router}litellm_settings:\n  drop_params: true\n"
            f"general_settings:\n  master_key: {_litellm.KEY}\n")


def start_litellm(upstreams: dict[str, Upstream], settings: Settings, instances: int,
                  redis_url: str | None) -> tuple[subprocess.Popen, str]:
    config = litellm_config(upstreams, settings, redis_url if instances > 1 else None)
    process, url, log = _litellm.start(config, workers=instances)
    print(f"LiteLLM Proxy {_litellm.LITELLM_VERSION}, {instances} worker(s), log {log}", flush=True)
    return process, url


def forget_litellm_keys(redis_url: str | None) -> None:
    """Drop LiteLLM's least-busy counters of these models (kept an hour; new deployment ids each run)."""
    if not redis_url:
        return
    import redis

    client = redis.Redis.from_url(redis_url)
    for model in (MODEL, FALLBACK):
        keys = list(client.scan_iter(match=f"{model}_request_count:*", count=1000))
        if keys:
            client.delete(*keys)
