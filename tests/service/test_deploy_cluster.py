"""Checks of the cluster deployment files: deploy/cluster-launcher.yaml and deploy/kuberay/* (docker-compose.yml and the
Dockerfiles: test_deploy_compose.py).

Nothing here starts a cluster (no Kubernetes on the test machines). What is checked, and against what:

- deploy/cluster-launcher.yaml: Ray's own JSON schema of cluster-launcher configs
  (ray/autoscaler/ray-schema.json of the installed ray), then Ray's prepare_config + validate_config.
- deploy/kuberay/*.yaml: a STRUCTURAL check written from KubeRay's v1 Go types and upstream samples
  (raycluster_types.go, rayjob_types.go, ray-cluster.sample.yaml, ray-job.sample.yaml), not the CRDs'
  OpenAPI schema, which does not ship with anything installable offline.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "cluster-launcher.yaml"
RAY_VERSION = "2.60.0"  # pyproject.toml pins ray[default]==2.60.0; checked below


def _load(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------
# Ray cluster launcher
# ---------------------------------------------------------------------------------------------------
def _ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).with_name("ray-schema.json")
    return json.loads(path.read_text())


def test_cluster_launcher_against_rays_schema():
    import jsonschema
    import ray

    assert ray.__version__ == RAY_VERSION
    cfg = _load(LAUNCHER)
    jsonschema.validate(cfg, _ray_schema())

    # Ray's own path in `ray up`: fill in the provider's defaults, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_cluster_launcher_schema_is_strict():
    """A misspelt top-level or node-type key is rejected (so the test above catches typos)."""
    import jsonschema

    schema = _ray_schema()
    bad = _load(LAUNCHER)
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    bad = _load(LAUNCHER)
    bad["available_node_types"]["ray.worker.gpu"]["min_worker"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_cluster_launcher_content():
    cfg = _load(LAUNCHER)
    assert cfg["provider"]["type"] == "aws"
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    workers = [t for t in types if t != cfg["head_node_type"]]
    gpu = [t for t in workers if re.match(r"^(g|p)\d", types[t]["node_config"]["InstanceType"])]
    assert gpu, "a GPU worker type"
    assert len({types[t]["node_config"]["ImageId"] for t in types}) == 1, "one AMI: one Python version on every node"
    setup = "\n".join(cfg["setup_commands"])
    # CUDA torch first, then tether with the cuda extra, editable (configs/ and assets/ come from the tree).
    torch_at, tether_at = setup.find("torch>="), setup.find('pip install -q -e "$HOME/tether[cuda]"')
    assert 0 <= torch_at < tether_at
    mounts = cfg["file_mounts"]
    assert mounts["/home/ubuntu/tether"] and mounts["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for cmd in cfg["head_start_ray_commands"][-1:] + cfg["worker_start_ray_commands"][-1:]:
        assert "RAY_AUTH_MODE=token" in cmd
    head_start = cfg["head_start_ray_commands"][-1]
    assert "--head" in head_start and "--port=6379" in head_start
    assert "$RAY_HEAD_IP:6379" in cfg["worker_start_ray_commands"][-1]


# ---------------------------------------------------------------------------------------------------
# KubeRay manifests
# ---------------------------------------------------------------------------------------------------
# Field names of KubeRay's ray.io/v1 Go types (ray-operator/apis/ray/v1/raycluster_types.go and
# rayjob_types.go, json tags). `authOptions` is the KubeRay >= 1.5.1 auth API.
RAYCLUSTER_SPEC = {"suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs", "authOptions"}
HEAD_GROUP = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds", "rayStartParams",
                "template", "scaleStrategy", "numOfHosts"}
WORKER_GROUP_REQUIRED = {"groupName", "minReplicas", "maxReplicas", "template"}  # json tags without omitempty
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
               "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint", "runtimeEnvYAML",
               "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend", "schedule"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# Kubernetes resource.Quantity, as the CRDs' schema writes it.
QUANTITY = re.compile(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
GPU = "nvidia.com/gpu"


def _pvc_name() -> str:
    pvc = _load(KUBERAY / "shared-pvc.yaml")
    assert pvc["apiVersion"] == "v1" and pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "head and workers share it"
    assert QUANTITY.match(str(pvc["spec"]["resources"]["requests"]["storage"]))
    return pvc["metadata"]["name"]


def _check_pod_template(template: dict, where: str, pvc: str, *, gpu: bool) -> dict:
    """Checks one Ray pod template; returns its Ray container (KubeRay takes the first one)."""
    spec = template["spec"]
    containers = spec["containers"]
    assert containers, f"{where}: no containers"
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for c in containers:
        assert DNS_LABEL.match(c["name"]), f"{where}: container name {c['name']!r}"
        assert c.get("image"), f"{where}: container {c['name']} has no image"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{where}: mount of undeclared volume {m['name']}"
        for kind in ("requests", "limits"):
            for res, qty in c.get("resources", {}).get(kind, {}).items():
                assert QUANTITY.match(str(qty)), f"{where}: {kind}.{res}={qty!r}"
        has_gpu = any(GPU in c.get("resources", {}).get(k, {}) for k in ("requests", "limits"))
        assert has_gpu == (gpu and c is containers[0]), f"{where}: {GPU} {'missing' if gpu else 'outside the GPU group'}"
    ray = containers[0]
    if gpu:
        assert ray["resources"]["limits"][GPU] >= 1 and ray["image"].endswith(":gpu")
    else:
        assert ray["image"].endswith(":cpu")
    # Token auth on every Ray container, from the one Secret.
    env = {e["name"]: e for e in ray.get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token", where
    ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"]) == ("tether-ray-auth", "auth_token"), where
    # The shared claim at /app/data and /app/runs, and a RAM-backed /dev/shm.
    claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
    assert claims == {pvc}, where
    paths = {m["mountPath"] for m in ray.get("volumeMounts", [])}
    assert {"/app/data", "/app/runs", "/dev/shm"} <= paths, where
    return ray


def _check_cluster_spec(spec: dict, where: str, pvc: str) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, f"{where}: unknown fields {set(spec) - RAYCLUSTER_SPEC}"
    assert spec["rayVersion"] == RAY_VERSION
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP, f"{where}.headGroupSpec: unknown fields {set(head) - HEAD_GROUP}"
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values()), "rayStartParams is map[string]string"
    ray_head = _check_pod_template(head["template"], f"{where}.head", pvc, gpu=False)
    ports = {p["name"]: p["containerPort"] for p in ray_head.get("ports", [])}
    assert ports.get("gcs-server") == 6379 and ports.get("dashboard") == 8265
    groups = spec["workerGroupSpecs"]
    assert len({g["groupName"] for g in groups}) == len(groups)
    for g in groups:
        w = f"{where}.{g['groupName']}"
        assert set(g) <= WORKER_GROUP, f"{w}: unknown fields {set(g) - WORKER_GROUP}"
        assert WORKER_GROUP_REQUIRED <= set(g), f"{w}: missing {WORKER_GROUP_REQUIRED - set(g)}"
        assert DNS_LABEL.match(g["groupName"])
        assert 0 <= g["minReplicas"] <= g.get("replicas", 0) <= g["maxReplicas"], w
        assert all(isinstance(v, str) for v in g.get("rayStartParams", {}).values()), f"{w}: rayStartParams is map[string]string"
        _check_pod_template(g["template"], w, pvc, gpu=g["groupName"].startswith("gpu"))
    assert {g["groupName"] for g in groups} >= {"cpu-workers", "gpu-workers"}


def test_kuberay_raycluster_structure():
    """Structural check of the RayCluster (from KubeRay's v1 Go types and samples), not the CRD's OpenAPI schema."""
    docs = [d for d in yaml.safe_load_all((KUBERAY / "raycluster.yaml").read_text()) if d]
    assert len(docs) == 1
    rc = docs[0]
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert DNS_LABEL.match(rc["metadata"]["name"])
    _check_cluster_spec(rc["spec"], "RayCluster", _pvc_name())


def test_kuberay_rayjob_structure():
    """Structural check of the RayJob (from KubeRay's v1 Go types and samples), not the CRD's OpenAPI schema."""
    from learner.config import load_config

    docs = [d for d in yaml.safe_load_all((KUBERAY / "rayjob.yaml").read_text()) if d]
    assert len(docs) == 1
    job = docs[0]
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, f"unknown RayJob fields {set(spec) - RAYJOB_SPEC}"
    assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), "one of rayClusterSpec / clusterSelector"
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec.get("submissionMode", "K8sJobMode") in SUBMISSION_MODES
    assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)

    # The entrypoint: prepare then train the default config. With `&&` it must be one `bash -c`
    # argument: KubeRay's submitter runs `ray job submit -- <entrypoint>` through a shell, and an
    # unwrapped `a && b` runs b in the submitter pod (KubeRay issue #3802).
    entry = spec["entrypoint"]
    argv = shlex.split(entry)
    script = argv[2] if argv[:2] == ["bash", "-c"] and len(argv) == 3 else entry
    assert "&&" not in entry or script is not entry, "wrap a multi-command entrypoint in bash -c '...'"
    steps = [s.strip() for s in script.split("&&")]
    assert steps[-2:] == ["tether prepare configs/default.yaml", "tether train configs/default.yaml"], steps
    assert load_config(ROOT / "configs" / "default.yaml").name  # the config the job runs exists and is valid

    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    env = {e["name"]: e for e in submitter["containers"][0]["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
    _check_cluster_spec(spec["rayClusterSpec"], "RayJob.rayClusterSpec", _pvc_name())


def test_kuberay_gpu_only_in_gpu_group():
    """nvidia.com/gpu appears in the manifests only under the GPU worker groups."""
    for name in ("raycluster.yaml", "rayjob.yaml"):
        doc = _load(KUBERAY / name)
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        head = json.dumps(spec["headGroupSpec"])
        assert GPU not in head
        for g in spec["workerGroupSpecs"]:
            assert (GPU in json.dumps(g)) == (g["groupName"] == "gpu-workers"), (name, g["groupName"])
        assert GPU not in json.dumps(doc["spec"].get("submitterPodTemplate", {}))


def test_ray_version_matches_pyproject():
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"ray[default]=={RAY_VERSION}" in deps
    assert f"rayproject/ray:{RAY_VERSION}-" in (DEPLOY / "Dockerfile.gpu").read_text()
