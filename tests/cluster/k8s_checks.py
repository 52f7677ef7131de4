"""What platform/k8s/ must agree with: relay/serve.py, relay/health.py, relay/settings.py, nginx's rules.

Each check takes the parsed manifests and returns its problems (empty: the check holds), so that
tests/cluster/test_k8s_manifests.py can prove every check on the real files and, on copies with
one control removed, prove the check notices.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "platform" / "k8s"
APPS = ("relay", "accounts", "audit", "billing", "agents")
RELAY_CONFIG, RELAY_SECRETS, API = "relay-config", "relay-secrets", "relay-api"
# Added by issue 19's Sentinel half; accepted until the code reads any Sentinel setting, after
# which the manifests' names must be exactly the ones it reads.
PENDING_SENTINEL_NAMES = {"REDIS_SENTINELS", "REDIS_SENTINEL_MASTER", "REDIS_SENTINEL_PASSWORD"}
STREAM_ANNOTATIONS = "nginx.ingress.kubernetes.io/"
ENV_READERS = {"getenv", "env_int", "env_bool", "env_list"}


def load_manifests() -> list[dict]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


class Manifests:
    def __init__(self, docs: list[dict]):
        self.docs = docs

    def of(self, kind: str) -> list[dict]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, name: str) -> dict:
        matches = [doc for doc in self.of(kind) if doc["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
        return matches[0]

    @property
    def config(self) -> dict:
        return self.one("ConfigMap", RELAY_CONFIG).get("data", {})

    @property
    def secret(self) -> dict:
        secret = self.one("Secret", RELAY_SECRETS)
        return {**secret.get("data", {}), **secret.get("stringData", {})}

    def pod_specs(self) -> list[tuple[dict, dict]]:
        """(workload, pod spec) of every Deployment and Job: all of them run the Relay image."""
        return [(doc, doc["spec"]["template"]["spec"]) for doc in self.of("Deployment") + self.of("Job")]

    def containers(self) -> list[tuple[str, dict]]:
        return [(f"{workload['metadata']['name']}/{container['name']}", container)
                for workload, spec in self.pod_specs()
                for container in spec.get("initContainers", []) + spec["containers"]]

    def api_pod(self) -> dict:
        return self.one("Deployment", API)["spec"]["template"]["spec"]

    def api_container(self) -> dict:
        return next(c for c in self.api_pod()["containers"] if "relay.serve" in " ".join(c.get("command", [])))


# --- what the code says -------------------------------------------------------------------------

def _source_files():
    for app in APPS:
        for path in (ROOT / app).rglob("*.py"):
            if "migrations" not in path.parts and "tests" not in path.parts:
                yield path


def _reads_environ(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ENV_READERS
    if isinstance(func, ast.Attribute):
        if func.attr in ENV_READERS:
            return True
        target = func.value
        return func.attr in {"get", "setdefault", "pop"} and (
            (isinstance(target, ast.Attribute) and target.attr == "environ")
            or (isinstance(target, ast.Name) and target.id == "environ"))
    return False


def environment_names_read() -> set[str]:
    """Every environment variable the code reads by a literal name (os.environ.get, env_int, ...)."""
    names = set()
    for path in _source_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            key = None
            if isinstance(node, ast.Call) and _reads_environ(node.func) and node.args:
                key = node.args[0]
            elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                    and node.value.attr == "environ":
                key = node.slice
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                names.add(key.value)
    return names


def setting_default(name: str) -> int:
    """The default of `NAME = env_int("NAME", default)` in relay/settings.py."""
    for node in ast.walk(ast.parse((ROOT / "relay" / "settings.py").read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value.args[1])
    raise LookupError(name)


def relay_port(m: Manifests) -> int:
    """The port relay.serve listens on: RELAY_PORT from the ConfigMap, else the image's, else 8000."""
    if "RELAY_PORT" in m.config:
        return int(m.config["RELAY_PORT"])
    found = re.search(r"RELAY_PORT=(\d+)", (ROOT / "platform" / "Dockerfile").read_text())
    return int(found.group(1)) if found else 8000


def streaming_locations() -> dict[str, str]:
    """{path: Exact|Prefix} of the unbuffered locations in platform/nginx/proxy.conf."""
    conf = (ROOT / "platform" / "nginx" / "proxy.conf").read_text()
    paths = {}
    for regex, target, body in re.findall(r"location\s+(~\s+)?(\S+)\s*\{([^}]*)\}", conf):
        if "proxy_buffering off" not in body:
            continue
        if regex:
            group = re.fullmatch(r"\^/\(([^)]*)\)\$", target)
            assert group, f"cannot read the location {target}"
            paths.update({f"/{alternative}": "Exact" for alternative in group.group(1).split("|")})
        else:
            paths[target] = "Prefix"
    return paths


# --- the checks -----------------------------------------------------------------------------------

def _probe_problems(m: Manifests, kind: str, view) -> list[str]:
    from django.urls import Resolver404, resolve

    container = m.api_container()
    probe = container.get(kind)
    if not probe or "httpGet" not in probe:
        return [f"api: no HTTP {kind}"]
    get, problems = probe["httpGet"], []
    try:
        if resolve(get["path"]).func is not view:
            problems.append(f"api {kind}: {get['path']} is not {view.__name__}")
    except Resolver404:
        problems.append(f"api {kind}: {get['path']} is no URL of Relay")
    ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    if ports.get(get["port"], get["port"]) != relay_port(m):
        problems.append(f"api {kind}: port {get['port']} is not RELAY_PORT {relay_port(m)}")
    host = {h["name"].lower(): h["value"] for h in get.get("httpHeaders", [])}.get("host")
    allowed = [h.strip() for h in m.config.get("ALLOWED_HOSTS", "").split(",")]
    if host is None or host not in allowed:
        problems.append(f"api {kind}: Host {host or '<the pod IP>'} is not in ALLOWED_HOSTS {allowed}")
    return problems


def check_probes(m: Manifests) -> list[str]:
    from relay import health

    container, problems = m.api_container(), []
    ports = [p["containerPort"] for p in container.get("ports", [])]
    if ports != [relay_port(m)]:
        problems.append(f"api: container ports {ports}, relay.serve listens on {relay_port(m)}")
    problems += _probe_problems(m, "readinessProbe", health.readyz)
    problems += _probe_problems(m, "livenessProbe", health.healthz)
    if "startupProbe" in container:
        problems += _probe_problems(m, "startupProbe", health.healthz)
    service = m.one("Service", API)
    if service["spec"]["selector"].items() - m.one("Deployment", API)["spec"]["template"]["metadata"][
            "labels"].items():
        problems.append("Service relay-api selects no api pod")
    names = {p.get("name") for p in container.get("ports", [])} | set(ports)
    problems += [f"Service port {p['port']} targets {p['targetPort']}, not the api's port"
                 for p in service["spec"]["ports"] if p["targetPort"] not in names]
    return problems


def pre_stop_seconds(container: dict) -> int | None:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return None
    if "sleep" in pre_stop:
        return int(pre_stop["sleep"]["seconds"])
    command = pre_stop.get("exec", {}).get("command", [])
    return int(command[1]) if command[:1] == ["sleep"] and len(command) == 2 else None


def check_grace(m: Manifests) -> list[str]:
    drain = int(m.config.get("RELAY_DRAIN_SECONDS", setting_default("RELAY_DRAIN_SECONDS")))
    pre_stop = pre_stop_seconds(m.api_container())
    if pre_stop is None:
        return ["api: no preStop sleep (the pod would stop listening before ingress-nginx forgets it)"]
    grace = m.api_pod().get("terminationGracePeriodSeconds", 30)
    if grace <= drain + pre_stop:
        return [f"api: terminationGracePeriodSeconds {grace} <= preStop {pre_stop} + RELAY_DRAIN_SECONDS {drain}"]
    return []


def _runs_beat(container: dict) -> bool:
    command = container.get("command", []) + container.get("args", [])
    return "celery" in command and ("beat" in command or "-B" in command or "--beat" in command)


def check_single_beat(m: Manifests) -> list[str]:
    beats = [(workload, c) for workload, spec in m.pod_specs() for c in spec["containers"] if _runs_beat(c)]
    if len(beats) != 1:
        return [f"{len(beats)} containers run celery beat, not exactly one"]
    workload, problems = beats[0][0], []
    name = workload["metadata"]["name"]
    if workload["kind"] != "Deployment" or workload["spec"].get("replicas", 1) != 1:
        problems.append(f"{name}: beat must be a Deployment with replicas 1")
    if workload["spec"].get("strategy", {}).get("type") != "Recreate":
        problems.append(f"{name}: beat must roll out with Recreate (a rolling update runs two)")
    problems += [f"HPA {h['metadata']['name']} scales the beat" for h in m.of("HorizontalPodAutoscaler")
                 if h["spec"]["scaleTargetRef"]["name"] == name]
    return problems


def check_ingress(m: Manifests) -> list[str]:
    routes = {}
    for ingress in m.of("Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                routes[(path["path"], path["pathType"])] = ingress
    problems = []
    for path, path_type in streaming_locations().items():
        ingress = routes.get((path, path_type))
        if ingress is None:
            problems.append(f"no Ingress routes the stream path {path} ({path_type})")
            continue
        annotations, name = ingress["metadata"].get("annotations", {}), ingress["metadata"]["name"]
        if ingress["spec"].get("ingressClassName") != "nginx":
            problems.append(f"Ingress {name}: not for ingress-nginx")
        if annotations.get(STREAM_ANNOTATIONS + "proxy-buffering") != "off":
            problems.append(f"Ingress {name} ({path}): proxy-buffering is not off")
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            if int(annotations.get(STREAM_ANNOTATIONS + timeout, 60)) < 3600:
                problems.append(f"Ingress {name} ({path}): {timeout} under an hour")
    return problems


def check_environment_names(m: Manifests) -> list[str]:
    read = environment_names_read()
    known = read if any("SENTINEL" in name for name in read) else read | PENDING_SENTINEL_NAMES
    set_here = {("ConfigMap", key) for key in m.config} | {("Secret", key) for key in m.secret}
    set_here |= {(where, env["name"]) for where, c in m.containers() for env in c.get("env", [])}
    return [f"{where} sets {name}, which Relay never reads" for where, name in sorted(set_here) if name not in known]


def check_configuration_sources(m: Manifests) -> list[str]:
    problems = []
    images = {c["image"] for _, c in m.containers()}
    if len(images) != 1:
        problems.append(f"the Relay containers run different images: {sorted(images)}")
    for where, container in m.containers():
        sources = {(s.get("configMapRef") or s.get("secretRef") or {}).get("name") for s in container.get("envFrom", [])}
        if {RELAY_CONFIG, RELAY_SECRETS} - sources:
            problems.append(f"{where}: not configured from both {RELAY_CONFIG} and {RELAY_SECRETS}")
    job = m.one("Job", "relay-migrate")["spec"]["template"]["spec"]["containers"][0]
    if "migrate --noinput" not in " ".join(job["command"]):
        problems.append("the relay-migrate Job does not run `manage.py migrate --noinput`")
    problems += [f"{workload['metadata']['name']}: Service links put RELAY_API_* variables in its environment"
                 for workload, spec in m.pod_specs() if spec.get("enableServiceLinks", True)]
    for deployment in m.of("Deployment"):
        waits = [c for c in deployment["spec"]["template"]["spec"].get("initContainers", [])
                 if "migrate --check" in " ".join(c.get("command", []))]
        if not waits:
            problems.append(f"{deployment['metadata']['name']}: starts without waiting for migrations")
    problems += [f"Secret {RELAY_SECRETS}: {key} holds a value, not a placeholder"
                 for key, value in m.secret.items() if value and "REPLACE_ME" not in value]
    if "data" in m.one("Secret", RELAY_SECRETS):
        problems.append(f"Secret {RELAY_SECRETS}: base64 `data` hides what is committed; use stringData")
    return problems


def check_security(m: Manifests) -> list[str]:
    writable = {"/tmp", m.config.get("PROMETHEUS_MULTIPROC_DIR", "/tmp")}  # noqa: S108 (a mount point)
    problems = []
    for workload, spec in m.pod_specs():
        name, pod = workload["metadata"]["name"], spec.get("securityContext", {})
        if pod.get("runAsNonRoot") is not True or pod.get("runAsUser", 0) == 0:
            problems.append(f"{name}: pods may run as root")
        if pod.get("seccompProfile", {}).get("type") not in {"RuntimeDefault", "Localhost"}:
            problems.append(f"{name}: no seccomp profile")
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in spec.get("initContainers", []) + spec["containers"]:
            where, context = f"{name}/{container['name']}", container.get("securityContext", {})
            if context.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem is writable")
            if context.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if "ALL" not in context.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities not dropped")
            if context.get("runAsUser") == 0 or context.get("runAsNonRoot") is False:
                problems.append(f"{where}: runs as root")
            mounted = {v["mountPath"] for v in container.get("volumeMounts", []) if v["name"] in empty_dirs}
            problems += [f"{where}: {path} is not writable (no emptyDir there)" for path in sorted(writable - mounted)]
    return problems


def _quantity(value) -> float:
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([\d.]+)([a-zA-Z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


def check_resources(m: Manifests) -> list[str]:
    problems = []
    for where, container in m.containers():
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            missing = {"cpu", "memory"} - set(resources.get(kind, {}))
            if missing:
                problems.append(f"{where}: no {kind} for {', '.join(sorted(missing))}")
        for resource, request in resources.get("requests", {}).items():
            limit = resources.get("limits", {}).get(resource)
            if limit is not None and _quantity(request) > _quantity(limit):
                problems.append(f"{where}: {resource} request {request} above its limit {limit}")
    return problems


def _allows_disruption(budget: dict, min_replicas: int) -> bool:
    if "maxUnavailable" in budget:
        return str(budget["maxUnavailable"]) not in {"0", "0%"}
    minimum = budget.get("minAvailable", min_replicas)
    return isinstance(minimum, int) and minimum < min_replicas


def check_scaling(m: Manifests) -> list[str]:
    problems, pod_labels = [], m.one("Deployment", API)["spec"]["template"]["metadata"]["labels"]
    hpas = [h for h in m.of("HorizontalPodAutoscaler") if h["spec"]["scaleTargetRef"]["name"] == API]
    if len(hpas) != 1 or hpas[0]["spec"]["scaleTargetRef"]["kind"] != "Deployment":
        problems.append("no HorizontalPodAutoscaler scales the api Deployment")
    min_replicas = hpas[0]["spec"].get("minReplicas", 1) if hpas else 1
    if min_replicas < 2:
        problems.append("the api may scale to one pod: a rollout or node drain would stop the service")
    budgets = [p for p in m.of("PodDisruptionBudget")
               if not p["spec"]["selector"]["matchLabels"].items() - pod_labels.items()]
    if len(budgets) != 1:
        problems.append("no PodDisruptionBudget covers the api pods")
    elif not _allows_disruption(budgets[0]["spec"], min_replicas):
        problems.append("the api PodDisruptionBudget allows no disruption: node drains would hang")
    rolling = m.one("Deployment", API)["spec"].get("strategy", {})
    if rolling.get("type", "RollingUpdate") != "RollingUpdate" or \
            str(rolling.get("rollingUpdate", {}).get("maxUnavailable", "25%")) not in {"0", "0%"}:
        problems.append("api rollouts may take a pod away before its replacement is ready")
    return problems


CHECKS = [check_probes, check_grace, check_single_beat, check_ingress, check_environment_names,
          check_configuration_sources, check_security, check_resources, check_scaling]
