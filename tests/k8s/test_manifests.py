"""Deployment artefacts: every Kustomize overlay renders (Debian's kubectl) and validates against
the Kubernetes schemas (kubernetes-validate; KEDA ScaledObjects against the vendored schema in
schemas/ with jsonschema); placement, probes, limits, ports and environment names agree with the
CLI; workers are found through headless Services and scaled by KEDA on their own metrics; the
Dockerfile runs `specgrove serve` as a non-root user."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from specgrove.config import SERVE_ENV, SERVE_ENV_EXTRA
from specgrove_apps.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.name for p in (ROOT / "k8s" / "overlays").iterdir())
GPU_OVERLAYS = [o for o in OVERLAYS if o != "dev"]
K8S_VERSION = "1.32"
ENV_NAMES = {v for v, _ in SERVE_ENV.values()} | set(SERVE_ENV_EXTRA)
ROLES = {"orchestrator", "drafter", "verifier"}
WORKERS = ("drafter", "verifier")
SCALEDOBJECT_SCHEMA = json.loads((Path(__file__).parent / "schemas" / "keda-scaledobject.json").read_text())
# Which metrics scale which worker role (specgrove/metrics.py; the `specgrove:` prefix; counters
# get `_total`): its own queue for both, KV slots for verifiers, the orchestrators' goodput for drafters.
SCALING_METRICS = {
    "verifier": {"specgrove:num_requests_waiting", "specgrove:kv_cache_usage_perc"},
    "drafter": {"specgrove:num_requests_waiting", "specgrove:generation_tokens_total"},
}


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed (Debian package 'kubectl'; `make install` tries to add it)")
    out = subprocess.run([kubectl, "kustomize", str(ROOT / "k8s" / "overlays" / overlay)], check=True,
                         capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def workloads(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def validate_scaledobject(doc: dict) -> None:
    """KEDA's CRD is not among kubernetes-validate's schemas: the vendored subset checks the
    object, and its HPA behaviour is checked as what KEDA hands on, an autoscaling/v2 HPA's."""
    jsonschema.validate(doc, SCALEDOBJECT_SCHEMA)
    spec = doc["spec"]
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "keda-hpa"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", **spec["scaleTargetRef"]},
                    "minReplicas": spec.get("minReplicaCount", 1),
                    "maxReplicas": spec["maxReplicaCount"], **({"behavior": behavior} if behavior else {})}}
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)


def test_there_are_gpu_overlays_and_a_dev_overlay():
    assert "dev" in OVERLAYS and len(GPU_OVERLAYS) >= 2


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay):
    docs = render(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds
    assert "HorizontalPodAutoscaler" not in kinds  # KEDA makes the HPAs from the ScaledObjects
    for doc in docs:
        if doc["kind"] == "ScaledObject":
            validate_scaledobject(doc)
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_scaledobject_schema_rejects_what_it_should():
    good = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"},
            "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicaCount": 2,
                     "triggers": [{"type": "prometheus", "metadata": {"serverAddress": "http://p:9090",
                                                                      "query": "up", "threshold": "1"}}]}}
    validate_scaledobject(good)
    bad = [
        {**good, "spec": {**good["spec"], "maxReplicas": 2}},  # an HPA field, unknown here
        {**good, "spec": {**good["spec"], "triggers": [{"type": "prometheus", "metadata": {"query": "up"}}]}},
        {**good, "spec": {**good["spec"], "triggers": [{"type": "prometheus", "metadata": {
            "serverAddress": "http://p:9090", "query": "up", "threshold": 1}}]}},  # KEDA's metadata is strings
        {**good, "spec": {**good["spec"], "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {
            "scaleDown": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 60}]}}}}}},
    ]
    for doc in bad:
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate_scaledobject(doc)


def _role(deployment: dict) -> str:
    return deployment["metadata"].get("labels", {}).get("app.kubernetes.io/component", "")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_worker_role_has_one_scaledobject_on_its_metrics(overlay):
    docs = render(overlay)
    deployments = workloads(docs)
    by_role: dict[str, list[dict]] = {}
    for scaled in of_kind(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target.get("kind", "Deployment") == "Deployment" and target["name"] in deployments, target
        by_role.setdefault(_role(deployments[target["name"]]), []).append(scaled)
    assert set(by_role) == set(WORKERS), by_role.keys()
    for role, (scaled, *more) in by_role.items():
        assert not more, f"{role}: {len(more) + 1} ScaledObjects"
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        queried = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
            queried |= set(re.findall(r"specgrove:[a-z_]+", trigger["metadata"]["query"]))
            assert trigger["metadata"]["serverAddress"].startswith("http")
        assert queried == SCALING_METRICS[role], (role, queried)
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["policies"] and all(p["type"] == "Pods" and p["value"] == 1 for p in down["policies"]), down
        assert down["stabilizationWindowSeconds"] >= 300  # drain: one pod at a time, slowly


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_are_found_through_headless_services_and_drain_on_scale_down(overlay):
    docs = render(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "specgrove-config")
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    deployments = workloads(docs)
    for role, variable in (("drafter", "SPECGROVE_DRAFTERS"), ("verifier", "SPECGROVE_VERIFIERS")):
        for address in config["data"][variable].split(","):
            match = re.fullmatch(r"dns:///([a-z0-9-]+):(\d+)", address.strip())
            assert match, f"{variable}={address!r}: not a dns:///NAME:PORT name"
            name, port = match[1], int(match[2])
            service = services[name]["spec"]
            assert service.get("clusterIP") == "None" and not service.get("publishNotReadyAddresses", False), name
            assert port in {p["port"] for p in service["ports"]}
            (deployment,) = [d for d in deployments.values()
                             if d["spec"]["selector"]["matchLabels"].items() <= service["selector"].items()]
            assert _role(deployment) == role
            pod = deployment["spec"]["template"]["spec"]
            # headless: clients dial the pod's own address, so the name's port is the container's
            assert {"name": "grpc", "containerPort": port} in pod["containers"][0]["ports"]
            assert pod["terminationGracePeriodSeconds"] >= 60, "time to finish its rounds after SIGTERM"
            # NOT_SERVING on grpc.health.v1 while draining must take the pod out of the endpoints
            assert pod["containers"][0]["readinessProbe"]["grpc"]["port"] == port
            assert "replicas" not in deployment["spec"], "the ScaledObject owns the replica count"
    for role in WORKERS:  # torch's threads follow the pod's CPU limit, not the node's cores
        (deployment,) = [d for d in deployments.values() if _role(d) == role]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        (threads,) = [e for e in container["env"] if e["name"] == "OMP_NUM_THREADS"]
        assert threads["valueFrom"]["resourceFieldRef"] == {"containerName": container["name"],
                                                            "resource": "limits.cpu", "divisor": "1"}, role
    budgets = of_kind(docs, "PodDisruptionBudget")
    for role in WORKERS:
        (deployment,) = [d for d in deployments.values() if _role(d) == role]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert sum(b["spec"]["selector"]["matchLabels"].items() <= labels.items() for b in budgets) == 1, role


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_limits_and_cli_compatible_settings(overlay):
    docs = render(overlay)
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "specgrove-config")
    assert set(config["data"]) <= ENV_NAMES, set(config["data"]) - ENV_NAMES
    port = int(config["data"]["SPECGROVE_PORT"])
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    roles = next(a for a in serve._actions if a.dest == "role").choices
    for name, deployment in workloads(docs).items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                assert probe in container, f"{name}/{container['name']} has no {probe}"
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
            for env in container.get("env", []):
                assert env["name"] in ENV_NAMES, env["name"]
            if container["args"][0] in ROLES if container.get("args") else False:
                assert container["args"][0] in roles
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert ports["grpc"] == port and set(ports) <= {"grpc", "http", "metrics"}
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                scraped = ports.get("metrics", ports.get("http"))  # /metrics: a worker's port, the orchestrator's HTTP
                assert env.get("SPECGROVE_METRICS_PORT" if "metrics" in ports else "SPECGROVE_HTTP_PORT") == str(scraped)
                annotations = deployment["spec"]["template"]["metadata"]["annotations"]
                assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(scraped)
                for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                    assert container[probe]["grpc"]["port"] == port  # native gRPC probes on grpc.health.v1


def _gpu_product(deployment: dict) -> str:
    terms = deployment["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    (expr,) = [e for t in terms for e in t["matchExpressions"] if e["key"] == "nvidia.com/gpu.product"]
    return expr["values"][0]


@pytest.mark.parametrize("overlay", GPU_OVERLAYS)
def test_drafters_and_the_verifier_land_on_different_gpu_products(overlay):
    deployments = workloads(render(overlay))
    drafter, verifier = deployments["specgrove-drafter"], deployments["specgrove-verifier"]
    assert _gpu_product(drafter) != _gpu_product(verifier)
    for d in (drafter, verifier):
        spec = d["spec"]["template"]["spec"]
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    orchestrator = deployments["specgrove-orchestrator"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in orchestrator["containers"][0]["resources"]["limits"]
    assert orchestrator["containers"][0]["image"].endswith("-cpu")


def test_dev_overlay_needs_no_gpu():
    for deployment in workloads(render("dev")).values():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in container["resources"]["limits"]


def test_dockerfile_is_multi_stage_non_root_and_serves_a_role():
    text = (ROOT / "Dockerfile").read_text()
    lines = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines() if line.strip() and not line.startswith("#")]
    stages = [line for line in lines if line.startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage"
    final = lines[lines.index(stages[-1]):]
    users = [line.split()[1] for line in final if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert 'ENTRYPOINT ["specgrove", "serve"]' in final
    cmd = [line for line in final if line.startswith("CMD ")][-1]
    assert any(role in cmd for role in ROLES)
    env = " ".join(line for line in final if line.startswith("ENV "))
    assert "SPECGROVE_PORT=50051" in env
    for name in re.findall(r"\b([A-Z][A-Z0-9_]+)=", env):
        assert name in ENV_NAMES | {"PATH", "GOMP_SPINCOUNT"}, name
    assert "EXPOSE 50051" in final
    assert any("ARG VARIANT" in line for line in lines)  # CPU or CUDA torch by build argument


def test_kuberay_cluster_has_one_worker_group_per_gpu_type_with_the_actor_resources():
    from services.ray_up import DRAFTER_RESOURCE, VERIFIER_RESOURCE

    cluster = yaml.safe_load((ROOT / "k8s" / "ray" / "raycluster.yaml").read_text())
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    products, resources = set(), set()
    for group in groups.values():
        spec = group["template"]["spec"]
        terms = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        products.add(terms[0]["matchExpressions"][0]["values"][0])
        resources.add(next(iter(yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"])))))
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert len(products) == len(groups) == 2
    assert resources == {DRAFTER_RESOURCE, VERIFIER_RESOURCE}
