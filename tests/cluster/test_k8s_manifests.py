"""platform/k8s/: valid against the Kubernetes schemas, and in agreement with how Relay runs.

`make lint` runs the kubernetes-validate CLI on the same files; the schema test here makes `make
test` check them too, and fails on a kind without a schema, which the CLI only warns about. The
consistency checks live in tests/cluster/k8s_checks.py; each is proven here on a copy of the
manifests with its control removed.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys

import kubernetes_validate
import pytest
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

from tests.cluster.k8s_checks import (
    API,
    CHECKS,
    K8S,
    ROOT,
    Manifests,
    check_configuration_sources,
    check_environment_names,
    check_grace,
    check_ingress,
    check_probes,
    check_resources,
    check_scaling,
    check_security,
    check_single_beat,
    load_manifests,
)


def k8s_versions() -> list[str]:
    """The Kubernetes versions `make lint` validates against (Makefile K8S_VERSIONS)."""
    found = re.search(r"^K8S_VERSIONS \?= (.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert found, "the Makefile names no K8S_VERSIONS"
    return found.group(1).split()


def test_make_lint_validates_every_manifest_strictly():
    makefile = (ROOT / "Makefile").read_text()
    lint = makefile.split("\nlint:", 1)[1].split("\n\n", 1)[0]
    assert "kubernetes-validate --strict" in lint and "platform/k8s/*.yaml" in lint
    assert len(k8s_versions()) >= 1 and all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in k8s_versions())


@pytest.mark.parametrize("version", k8s_versions())
def test_every_manifest_is_valid_against_the_kubernetes_schemas_in_strict_mode(version):
    docs = load_manifests()
    kinds = {doc["kind"] for doc in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Job", "Deployment", "Service", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Ingress"} <= kinds
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except ValidationError as e:
            pytest.fail(f"{name}: {'.'.join(map(str, e.path))}: {e.message}")
        except SchemaNotFoundError:
            pytest.fail(f"{name}: no schema for {doc['apiVersion']} in Kubernetes {version}")


def test_strict_validation_rejects_an_unknown_field():
    deployment = copy.deepcopy(Manifests(load_manifests()).one("Deployment", API))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # a typo'd field
    with pytest.raises(ValidationError):
        kubernetes_validate.validate(deployment, k8s_versions()[0], strict=True)


def test_the_cli_make_lint_runs_passes():
    args = [arg for version in k8s_versions() for arg in ("-k", version)]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *args,
                             *sorted(map(str, K8S.glob("*.yaml")))], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "ERROR" not in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_the_manifests_agree_with_relay(check):
    assert check(Manifests(load_manifests())) == []


# --- each check notices its control missing ----------------------------------------------------

def _find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def _pod(docs, name=API):
    return _find(docs, "Deployment", name)["spec"]["template"]["spec"]


def _api(docs):
    return _pod(docs)["containers"][0]


def _config(docs):
    return _find(docs, "ConfigMap", "relay-config")["data"]


def _stream_ingress(docs):
    return _find(docs, "Ingress", "relay-stream")["metadata"]["annotations"]


def _drop(mapping, key):
    mapping.pop(key)


MUTATIONS = {
    "readiness on another path": (check_probes, lambda d: _api(d)["readinessProbe"]["httpGet"].update(path="/healthz")),
    "readiness on no URL": (check_probes, lambda d: _api(d)["readinessProbe"]["httpGet"].update(path="/ready")),
    "liveness on readyz": (check_probes, lambda d: _api(d)["livenessProbe"]["httpGet"].update(path="/readyz")),
    "no liveness probe": (check_probes, lambda d: _drop(_api(d), "livenessProbe")),
    "probe on another port": (check_probes, lambda d: _api(d)["readinessProbe"]["httpGet"].update(port=8001)),
    "container port not RELAY_PORT": (check_probes, lambda d: _config(d).update(RELAY_PORT="9000")),
    "probe without Host": (check_probes, lambda d: _drop(_api(d)["livenessProbe"]["httpGet"], "httpHeaders")),
    "probe host not allowed": (check_probes, lambda d: _config(d).update(ALLOWED_HOSTS="relay.example.com")),
    "service selects nothing": (check_probes, lambda d: _find(d, "Service", API)["spec"]["selector"].update(
        {"app.kubernetes.io/component": "web"})),
    "no preStop": (check_grace, lambda d: _drop(_api(d), "lifecycle")),
    "grace period too short": (check_grace, lambda d: _pod(d).update(terminationGracePeriodSeconds=30)),
    "longer drain": (check_grace, lambda d: _config(d).update(RELAY_DRAIN_SECONDS="60")),
    "longer preStop": (check_grace, lambda d: _api(d)["lifecycle"]["preStop"]["exec"].update(command=["sleep", "15"])),
    "two beats": (check_single_beat, lambda d: _find(d, "Deployment", "relay-beat")["spec"].update(replicas=2)),
    "beat rolled": (check_single_beat, lambda d: _find(d, "Deployment", "relay-beat")["spec"].update(
        strategy={"type": "RollingUpdate"})),
    "worker embeds beat": (check_single_beat, lambda d: _pod(d, "relay-worker")["containers"][0]["command"].append("-B")),
    "buffered streams": (check_ingress, lambda d: _drop(_stream_ingress(d), "nginx.ingress.kubernetes.io/proxy-buffering")),
    "short stream reads": (check_ingress, lambda d: _stream_ingress(d).update(
        {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"})),
    "short stream sends": (check_ingress, lambda d: _drop(_stream_ingress(d), "nginx.ingress.kubernetes.io/proxy-send-timeout")),
    "websocket path unrouted": (check_ingress, lambda d: _find(d, "Ingress", "relay-stream")["spec"]["rules"][0]["http"][
        "paths"].pop()),
    "typo in the ConfigMap": (check_environment_names, lambda d: _config(d).update(RELAY_DRAIN_SECOND="30")),
    "typo in a container env": (check_environment_names, lambda d: _api(d).update(env=[{"name": "RELAY_HEAVY_SLOT", "value": "1"}])),
    "no Secret for a container": (check_configuration_sources, lambda d: _api(d)["envFrom"].pop()),
    "another image": (check_configuration_sources, lambda d: _api(d).update(image="relay:other")),
    "a real secret": (check_configuration_sources, lambda d: _find(d, "Secret", "relay-secrets")["stringData"].update(
        SECRET_KEY="s3cr3t-value")),
    "service links": (check_configuration_sources, lambda d: _find(d, "Job", "relay-migrate")["spec"]["template"][
        "spec"].pop("enableServiceLinks")),
    "no migration wait": (check_configuration_sources, lambda d: _drop(_pod(d, "relay-worker"), "initContainers")),
    "may run as root": (check_security, lambda d: _pod(d)["securityContext"].update(runAsNonRoot=False)),
    "writable root": (check_security, lambda d: _drop(_api(d)["securityContext"], "readOnlyRootFilesystem")),
    "privilege escalation": (check_security, lambda d: _pod(d, "relay-beat")["containers"][0]["securityContext"].update(
        allowPrivilegeEscalation=True)),
    "metrics dir not writable": (check_security, lambda d: _api(d)["volumeMounts"].pop()),
    "no limits": (check_resources, lambda d: _drop(_pod(d, "relay-worker")["containers"][0]["resources"], "limits")),
    "init without requests": (check_resources, lambda d: _drop(_pod(d)["initContainers"][0]["resources"], "requests")),
    "request above limit": (check_resources, lambda d: _api(d)["resources"]["requests"].update(memory="4Gi")),
    "no autoscaler": (check_scaling, lambda d: d.remove(_find(d, "HorizontalPodAutoscaler", API))),
    "budget blocks drains": (check_scaling, lambda d: _find(d, "PodDisruptionBudget", API)["spec"].update(maxUnavailable=0)),
    "rollout drops a pod first": (check_scaling, lambda d: _find(d, "Deployment", API)["spec"]["strategy"][
        "rollingUpdate"].update(maxUnavailable=1)),
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_check_fails_when_its_control_is_removed(mutation):
    check, mutate = MUTATIONS[mutation]
    docs = copy.deepcopy(load_manifests())
    assert check(Manifests(docs)) == []
    mutate(docs)
    assert check(Manifests(docs)), f"{check.__name__} missed: {mutation}"


# --- the Secret's placeholders cannot serve ---------------------------------------------------

def _manage_check_deploy(secret_key: str, metrics_dir) -> subprocess.CompletedProcess:
    """The relay-migrate Job's first step, in the environment the manifests give its container
    (PROMETHEUS_MULTIPROC_DIR on a fresh directory, as the pod's emptyDir)."""
    m = Manifests(load_manifests())
    job = m.one("Job", "relay-migrate")["spec"]["template"]["spec"]["containers"][0]
    check = job["command"][-1].split(" && ")[0].split()
    assert check[:3] == ["python", "manage.py", "check"]
    env = {"PATH": os.environ["PATH"], **m.config, **m.secret, "SECRET_KEY": secret_key,
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    return subprocess.run([sys.executable, *check[1:]], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_migrate_job_refuses_the_placeholder_secret_key(tmp_path):
    placeholder = Manifests(load_manifests()).secret["SECRET_KEY"]
    refused = _manage_check_deploy(placeholder, tmp_path)
    assert refused.returncode != 0 and "security.W009" in refused.stderr, refused.stdout + refused.stderr
    accepted = _manage_check_deploy("k" * 20 + "a-real-production-secret-of-sufficient-length-123456789", tmp_path)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
