"""The manifests under ``deploy/``: valid Kubernetes objects, and consistent with the image and the service.

Offline: the Deployment, Service and HorizontalPodAutoscaler are validated strictly (unknown fields rejected)
against the JSON schemas of a pinned Kubernetes version shipped in ``kubernetes-validate``. The KServe
``InferenceService`` is a custom resource those schemas do not know: its pod part is validated as a Kubernetes
``PodSpec`` and the KServe part is checked field by field. Port, user, health paths and the grace period are
read from the ``Dockerfile``, ``service/settings.py`` and the app's routes, never restated here.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# The oldest Kubernetes these manifests target: the preStop ``sleep`` action is beta and on by default from 1.30.
KUBERNETES_VERSION = "1.30.0"
CORE_MANIFESTS = ["deployment.yaml", "service.yaml", "hpa.yaml"]
ISVC = "kserve-inferenceservice.yaml"
# InferenceService predictor fields that are KServe's own (ComponentExtensionSpec), next to the inline PodSpec.
KSERVE_EXTENSION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "minReplicas": int,
    "maxReplicas": int,
    "scaleTarget": int,
    "scaleMetric": str,
    "containerConcurrency": int,
    "timeout": int,
    "canaryTrafficPercent": int,
    "labels": dict,
    "annotations": dict,
    "logger": dict,
    "batcher": dict,
    "deploymentStrategy": dict,
}


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d is not None]
    assert len(docs) == 1, f"{name}: expected one object, got {len(docs)}"
    return docs[0]


# ---- what the image and the service say ------------------------------------------------------------------------
def dockerfile_instructions() -> list[tuple[str, str]]:
    """The final stage's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    logical = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in logical.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    last_from = max(i for i, (k, _) in enumerate(instructions) if k == "FROM")
    return instructions[last_from:]


class Image:
    """Port, user, group and health path of the final image, as its Dockerfile declares them."""

    def __init__(self) -> None:
        instructions = dockerfile_instructions()
        exposed = [a for k, a in instructions if k == "EXPOSE"]
        assert len(exposed) == 1, f"expected one EXPOSE, got {exposed}"
        ports = {int(p.split("/")[0]) for p in exposed[0].split()}
        env: dict[str, str] = {}
        for k, a in instructions:
            if k == "ENV":
                env.update(item.split("=", 1) for item in shlex.split(a) if "=" in item)
        self.env = env
        #: HTTP and gRPC: where the image's environment tells the service to listen, and what it EXPOSEs.
        self.port = int(env[f"{ENV_PREFIX}PORT"])
        self.grpc_port = int(env[f"{ENV_PREFIX}GRPC_PORT"])
        assert ports == {self.port, self.grpc_port}, (
            f"EXPOSE {sorted(ports)}: expected the HTTP and gRPC ports"
        )
        users = [a for k, a in instructions if k == "USER"]
        uid, _, gid = users[-1].partition(":")
        self.uid, self.gid = int(uid), int(gid or uid)
        healthchecks = [a for k, a in instructions if k == "HEALTHCHECK"]
        assert len(healthchecks) == 1, f"expected one HEALTHCHECK, got {healthchecks}"
        paths = re.findall(r"/v2/health/\w+", healthchecks[0])
        assert len(paths) == 1, f"expected one health path in the HEALTHCHECK, got {paths}"
        self.health_path = paths[0]


@pytest.fixture(scope="module")
def image() -> Image:
    return Image()


def default_app() -> Any:
    """The app with default settings on the committed models/, whatever BNSERVE_* the environment has."""
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(ENV_PREFIX)}
    try:
        # gRPC off: the routes do not depend on it, and the default port may be taken on a shared machine.
        return create_app(Settings(model_repository=ROOT / "models", grpc_port=0))
    finally:
        os.environ.update(saved)


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """GET paths of the real app (building it loads no model)."""
    return {r.path for r in default_app().routes if "GET" in getattr(r, "methods", set())}


def graceful_timeout(container: dict[str, Any]) -> int:
    """The drain time the container runs with: its BNSERVE_GRACEFUL_TIMEOUT, else the settings' default."""
    for var in container.get("env", []):
        if var["name"] == f"{ENV_PREFIX}GRACEFUL_TIMEOUT":
            return int(var["value"])
    return int(Settings.model_fields["graceful_timeout"].default)


# ---- the workloads: the Deployment's pod template and the InferenceService's predictor --------------------------
def deployment_pod() -> dict[str, Any]:
    return load("deployment.yaml")["spec"]["template"]["spec"]


def isvc_pod() -> dict[str, Any]:
    """The predictor without KServe's extension fields: a Kubernetes PodSpec."""
    predictor = load(ISVC)["spec"]["predictor"]
    return {k: v for k, v in predictor.items() if k not in KSERVE_EXTENSION_FIELDS}


WORKLOADS = {"deployment": deployment_pod, "inferenceservice": isvc_pod}


def serving_container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["containers"]
    assert len(containers) == 1, f"expected one container, got {[c['name'] for c in containers]}"
    return containers[0]


def probe_port(container: dict[str, Any], probe: dict[str, Any]) -> int:
    """A probe's port as a number, resolving a named container port."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in named, f"probe port {port!r} names no container port (have {sorted(named)})"
    return named[port]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a float (cores or bytes): "500m", "1", "192Mi", "1G"."""
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, unit = match.groups()
    assert unit in units or unit == "", f"unknown unit in {value!r}"
    return float(number) * units.get(unit, 1.0)


# ---- schema validation -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CORE_MANIFESTS)
def test_core_manifests_are_valid_kubernetes(name: str) -> None:
    kubernetes_validate.validate(load(name), KUBERNETES_VERSION, strict=True)


def test_schema_validation_rejects_a_broken_deployment() -> None:
    """The check above can fail: a string port and an unknown field are both caught."""
    bad = load("deployment.yaml")
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    typo = load("deployment.yaml")
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


def test_inferenceservice_pod_part_is_a_valid_pod_spec() -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "digits-predictor"}, "spec": isvc_pod()}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_inferenceservice_is_a_kserve_v2_custom_predictor(image: Image) -> None:
    isvc = load(ISVC)
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert isvc["kind"] == "InferenceService"
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", isvc["metadata"]["name"]), "not a DNS-1035 label"
    assert set(isvc["spec"]) == {"predictor"}, f"only a predictor is expected, got {sorted(isvc['spec'])}"
    predictor = isvc["spec"]["predictor"]
    for key, kind in KSERVE_EXTENSION_FIELDS.items():
        if key in predictor:
            assert isinstance(predictor[key], kind), (
                f"predictor.{key}: expected {kind}, got {predictor[key]!r}"
            )
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    # A custom predictor: containers, no framework "model" block; KServe serves the container named so.
    assert "model" not in predictor
    container = serving_container(predictor)
    assert container["name"] == "kserve-container"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("PROTOCOL") == "v2", "custom predictors declare their protocol in the PROTOCOL variable"
    # KServe routes to the first declared port (8080 only when none is): HTTP, named http1 as Knative wants.
    assert container["ports"][0]["containerPort"] == image.port
    assert container["ports"][0]["name"] in ("http1", "h2c")
    mode = isvc["metadata"].get("annotations", {}).get("serving.kserve.io/deploymentMode")
    assert mode in (None, "Serverless", "Knative", "RawDeployment", "Standard")
    if len(container["ports"]) > 1:  # Knative (serverless) refuses a second port
        assert mode in ("RawDeployment", "Standard")
        assert [p["containerPort"] for p in container["ports"][1:]] == [image.grpc_port]


# ---- consistency with the image and the service ------------------------------------------------------------------
@pytest.mark.parametrize("workload", WORKLOADS)
def test_ports_match_the_image(workload: str, image: Image) -> None:
    container = serving_container(WORKLOADS[workload]())
    assert [p["containerPort"] for p in container["ports"]] == [image.port, image.grpc_port]
    assert container["ports"][1]["name"] == "grpc"
    assert image.grpc_port == Settings.model_fields["grpc_port"].default, "the image keeps the default"
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get(f"{ENV_PREFIX}PORT", str(image.port)) == str(image.port)
    assert env.get(f"{ENV_PREFIX}GRPC_PORT", str(image.grpc_port)) == str(image.grpc_port)
    assert env.get(f"{ENV_PREFIX}HOST", image.env[f"{ENV_PREFIX}HOST"]) == "0.0.0.0"


@pytest.mark.parametrize("workload", WORKLOADS)
def test_runs_as_the_image_user_without_privileges(workload: str, image: Image) -> None:
    pod = WORKLOADS[workload]()
    container = serving_container(pod)
    pod_sc, sc = pod["securityContext"], container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert sc.get("runAsUser", pod_sc["runAsUser"]) == image.uid
    assert sc.get("runAsGroup", pod_sc["runAsGroup"]) == image.gid
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("workload", WORKLOADS)
def test_probes_use_the_service_health_routes(workload: str, image: Image, routes: set[str]) -> None:
    container = serving_container(WORKLOADS[workload]())
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"]["path"] == image.health_path == "/v2/health/ready"
    assert liveness["httpGet"]["path"] == "/v2/health/live"
    for probe in (readiness, liveness, container.get("startupProbe")):
        if probe is not None:
            assert probe["httpGet"]["path"] in routes, f"{probe['httpGet']['path']} is not a route of the app"
            assert probe_port(container, probe) == image.port


@pytest.mark.parametrize("workload", WORKLOADS)
def test_grace_period_covers_prestop_and_drain(workload: str) -> None:
    """SIGKILL must not cut the drain short: grace >= preStop pause + BNSERVE_GRACEFUL_TIMEOUT (+1 s slack),
    and not much longer than that (a stuck pod should not hold a rollout for minutes)."""
    pod = WORKLOADS[workload]()
    container = serving_container(pod)
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    needed = pause + graceful_timeout(container)
    assert needed + 1 <= pod["terminationGracePeriodSeconds"] <= needed + 10


@pytest.mark.parametrize("workload", WORKLOADS)
def test_resources_are_requested_and_limited(workload: str) -> None:
    resources = serving_container(WORKLOADS[workload]())["resources"]
    for kind in ("cpu", "memory"):
        request, limit = quantity(resources["requests"][kind]), quantity(resources["limits"][kind])
        assert 0 < request <= limit, (
            f"{kind}: request {request} must be positive and at most the limit {limit}"
        )


def test_service_selects_the_deployment_pods_on_their_port() -> None:
    deployment, service = load("deployment.yaml"), load("service.yaml")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    container = serving_container(deployment["spec"]["template"]["spec"])
    port_names = {p["name"] for p in container["ports"]}
    for port in service["spec"]["ports"]:
        target = port["targetPort"]
        assert target in port_names or target in {p["containerPort"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == port_names, "HTTP and gRPC both reachable"
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["targetPort"] == "grpc"]
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"


def test_metrics_annotations_point_at_the_container(image: Image, routes: set[str]) -> None:
    annotations = load("deployment.yaml")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == image.port
    assert annotations["prometheus.io/path"] in routes


def test_hpa_scales_the_deployment() -> None:
    deployment, hpa = load("deployment.yaml"), load("hpa.yaml")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        deployment["apiVersion"],
        deployment["kind"],
        deployment["metadata"]["name"],
    )
    lo, hi = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 2 <= lo <= deployment["spec"]["replicas"] <= hi, "at least two replicas, so one can restart"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu", "utilisation is only defined against a CPU request"
    requests = serving_container(deployment["spec"]["template"]["spec"])["resources"]["requests"]
    assert "cpu" in requests


def test_kustomization_lists_the_plain_kubernetes_manifests() -> None:
    kustomization = load("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(CORE_MANIFESTS)
    image_names = {i["name"] for i in kustomization["images"]}
    container = serving_container(deployment_pod())
    assert container["image"].split(":")[0] in image_names


def test_every_manifest_is_checked() -> None:
    on_disk = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*.y*ml")}
    assert on_disk == {
        *CORE_MANIFESTS,
        ISVC,
        "kustomization.yaml",
        "prometheus/rules.yml",
        "prometheus/rules_test.yml",
    }


# ---- Prometheus rules that combine replicas (deploy/prometheus/) -------------------------------------------------
RULES = DEPLOY / "prometheus" / "rules.yml"


def exported_metric_names() -> set[str]:
    """Sample names at ``/metrics`` of the real app after one V2 inference (drift on, its default)."""
    with TestClient(default_app()) as client:
        meta = client.get("/v2/models/digits").json()
        (spec,) = meta["inputs"]
        n_features = spec["shape"][1]
        body = {
            "inputs": [
                {
                    "name": spec["name"],
                    "shape": [1, n_features],
                    "datatype": "FP32",
                    "data": [0.0] * n_features,
                }
            ]
        }
        assert client.post("/v2/models/digits/infer", json=body).status_code == 200
        text = client.get("/metrics").text
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_prometheus_rules_read_metrics_the_service_exports() -> None:
    exported = exported_metric_names()
    groups = yaml.safe_load(RULES.read_text())["groups"]
    expressions = [rule["expr"] for group in groups for rule in group["rules"]]
    used = {name for expr in expressions for name in re.findall(r"\bbnserve_[a-z_]+", expr)}
    assert {"bnserve_requests_total", "bnserve_drift_score", "bnserve_drift_rows_effective"} <= used
    assert used <= exported, f"not exported by the service: {sorted(used - exported)}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian: prometheus)")
def test_prometheus_rules_pass_their_unit_tests() -> None:
    """The PromQL against synthetic replicas, with the values worked out by hand in rules_test.yml."""
    out = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yml"],
        cwd=RULES.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
