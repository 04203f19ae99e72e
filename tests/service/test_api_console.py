"""What the service's page (and any client) works from, and the hostile probes of issue 24 that found defects, each against a
real valkey-server: presets, paged run summaries, strict types, hub names that were local folders, run folders chosen by the
service, paths relative to the data directory, HEAD, 415, CORS, the API docs without a CDN."""
import json
import re

import pytest
import yaml
from fastapi.testclient import TestClient

from learner.config import load_config
from services.server.api import ServiceSettings, create_app
from services.server.api_models import RunCreate, ServiceRunConfig
from services.server.presets import BUILTIN, Presets, merge

TOKEN = "console-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingJobs:
    """Ray job submission as the scheduler sees it (submit, status), recording each entrypoint: the test asserts on what a real
    `ray job submit` would have been given. The Ray path itself runs in tests/service/test_api_ray.py."""

    def __init__(self):
        self.submitted: list[tuple[str, str]] = []

    def submit(self, entrypoint: str, *, job_id: str, env: dict) -> str:
        self.submitted.append((job_id, entrypoint))
        return job_id

    def status(self, job_id: str):
        return "PENDING"

    def cluster_resources(self):
        return {"CPU": 64.0, "GPU": 0.0}

    def available_resources(self):
        return {"CPU": 64.0, "GPU": 0.0}

    def stop(self, job_id: str) -> bool:
        return True

    def info(self, job_id: str):
        return None


def _app(tmp_path, url, **kw):
    return create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=url, token=TOKEN, jobs=kw.pop("jobs", None), **kw))


@pytest.fixture
def api(tmp_path, tether_redis):
    with TestClient(_app(tmp_path, tether_redis.url)) as client:
        yield client


def _fields(resp) -> list[str]:
    return [d["field"] for d in resp.json()["detail"]]


# -- presets ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_every_builtin_preset_is_a_valid_service_run(name):
    cfg = ServiceRunConfig.model_validate(Presets().config(name), strict=True)
    assert cfg.guard.enabled  # the service's default reaches a preset run too


def test_a_run_from_a_preset_with_overrides_is_saved_merged(api, tmp_path):
    presets = api.get("/presets", headers=AUTH).json()
    assert {p["name"] for p in presets} >= {"tiny", "ppo-kl", "elastic-reset"} and all(p["description"] for p in presets)
    r = api.post("/runs", json={"preset": "elastic-reset", "config": {"kl": {"coef": 0.02}, "name": "mine"}}, headers=AUTH)
    assert r.status_code == 201, r.text
    saved = load_config(tmp_path / "svc" / r.json()["config_path"])
    assert saved.name == "mine" and saved.kl.coef == 0.02 and saved.kl.mode == "fixed"  # override merged into the preset's kl
    assert saved.elastic_reset.enabled and saved.elastic_reset.every == 17 and saved.guard.enabled
    r = api.post("/runs", json={"preset": "no-such", "config": {}}, headers=AUTH)
    assert r.status_code == 422 and _fields(r) == ["preset"] and "elastic-reset" in r.json()["message"]
    # an override that is invalid is named by its field, inside the merged config
    r = api.post("/runs", json={"preset": "tiny", "config": {"train": {"iterations": 0}}}, headers=AUTH)
    assert r.status_code == 422 and _fields(r) == ["config.train.iterations"]


def test_operator_presets_from_a_folder(tmp_path, tether_redis):
    d = tmp_path / "presets"
    d.mkdir()
    (d / "lab-default.yaml").write_text("# The lab's usual run.\nname: lab\nppo: {lr: 3e-5}\nkl: {coef: 1e-2, mode: fixed}\n")
    with TestClient(_app(tmp_path, tether_redis.url, presets_dir=d)) as api:
        p = {x["name"]: x for x in api.get("/presets", headers=AUTH).json()}["lab-default"]
        assert p["description"] == "The lab's usual run." and p["config"]["ppo"]["lr"] == 3e-5  # YAML's '3e-5' string read as a number
        assert api.post("/runs", json={"preset": "lab-default"}, headers=AUTH).status_code == 201
    (d / "broken.yaml").write_text("kl: {coef: -1}\n")
    with pytest.raises(ValueError, match="broken.yaml: not a valid config"):
        Presets(d)


def test_merge_is_key_by_key():
    assert merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": [1]}) == {"a": {"x": 1, "y": 3}, "b": 1, "c": [1]}
    assert merge({"a": {"x": 1}}, {"a": 5}) == {"a": 5}


# -- strict types (before: "0.1" -> 0.1, true -> 1.0, "10" -> 10, all 201) ---------------------------
@pytest.mark.parametrize("config, field", [
    ({"kl": {"coef": "0.1"}}, "config.kl.coef"),
    ({"kl": {"coef": True}}, "config.kl.coef"),
    ({"train": {"iterations": "10"}}, "config.train.iterations"),
    ({"train": {"iterations": 10.5}}, "config.train.iterations"),
    ({"elastic_reset": {"enabled": 1}}, "config.elastic_reset.enabled"),
    ({"elastic_reset": {"enabled": "true"}}, "config.elastic_reset.enabled"),
])
def test_types_are_strict(api, config, field):
    r = api.post("/runs", json={"config": config}, headers=AUTH)
    assert r.status_code == 422 and _fields(r) == [field], r.text


def test_integral_numbers_are_integers(api, tmp_path):
    """JSON Schema's integer includes 10.0 (schemathesis sends such values): accepted as 10, as the schema promises."""
    r = api.post("/runs", json={"config": {"train": {"iterations": 10.0}, "kl": {"coef": 1}}}, headers=AUTH)
    assert r.status_code == 201, r.text
    saved = load_config(tmp_path / "svc" / r.json()["config_path"])
    assert saved.train.iterations == 10 and isinstance(saved.train.iterations, int) and saved.kl.coef == 1.0


def test_parameter_changes_are_strict(api, tether_redis):
    from services.state.redis_store import RunStore

    store = RunStore(tether_redis.url)
    store.create_run("r-live", {"name": "live", "state": "running", "config": ServiceRunConfig(kl={"mode": "adaptive"}, guard={"enabled": True}).dump()})
    for body, field in (({"kl_coef": "0.1"}, "kl_coef"), ({"kl_coef": True}, "kl_coef"), ({"eval_every": "3"}, "eval_every"),
                        ({"guard_action": "explode"}, "guard_action")):
        r = api.patch("/runs/r-live/params", json=body, headers=AUTH)
        assert r.status_code == 422 and _fields(r) == [field], r.text
    r = api.patch("/runs/r-live/params", json={"kl_coef": 1, "eval_every": 3.0}, headers=AUTH)
    assert r.status_code == 202 and r.json()["args"] == {"kl_coef": 1.0, "eval_every": 3}, r.text  # an integer is a number
    r = api.patch("/runs/r-live/params", json={"guard_action": "stop"}, headers=AUTH)
    assert r.status_code == 202 and r.json()["args"] == {"guard_action": "stop"}
    store.create_run("r-noguard", {"name": "n", "state": "running", "config": ServiceRunConfig(guard={"enabled": False}).dump()})
    r = api.patch("/runs/r-noguard/params", json={"guard_action": "stop"}, headers=AUTH)
    assert r.status_code == 409 and "guard is off" in r.json()["detail"]


def test_a_config_of_90000_keys_is_refused(api):
    """Before: a 979 KB config with 90,000 keys was accepted, and every GET /runs was 1.2 MB from then on."""
    r = api.post("/runs", json={"config": {"task": {"name": "dataset", "data": {"path": "org/prompts",
                                                                                "metadata_keys": [f"k{i}" for i in range(90_000)]}}}},
                 headers=AUTH)
    assert r.status_code == 422 and _fields(r) == ["config"] and "at most 4096" in r.text
    assert RunCreate.model_validate({"config": ServiceRunConfig().dump()})  # a full dump is well inside the bound


# -- names and folders ------------------------------------------------------------------------------
def test_hub_names_that_are_local_folders_are_refused(api, tmp_path, monkeypatch):
    """Before: policy.name_or_path 'assets/imdb-policy' and proxy.name_or_path 'svc/redis' (a folder of the server) got 201."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "assets" / "imdb-policy").mkdir(parents=True)
    (tmp_path / "svc" / "redis").mkdir(parents=True)  # what an embedded Redis of a service started in tmp_path has
    for field, value in (("policy", "assets/imdb-policy"), ("proxy", "svc/redis"), ("gold", "svc")):
        r = api.post("/runs", json={"config": {field: {"name_or_path": value}}}, headers=AUTH)
        assert r.status_code == 422 and _fields(r) == [f"config.{field}.name_or_path"] and "not a hub name" in r.text, (field, r.text)
    r = api.post("/runs", json={"config": {"policy": {"name_or_path": "data:redis"}}}, headers=AUTH)
    assert r.status_code == 422 and "service's own files" in r.text
    assert api.post("/runs", json={"config": {"policy": {"name_or_path": "openai-community/gpt2"}}}, headers=AUTH).status_code == 201


@pytest.mark.parametrize("config, field", [
    ({"runs_dir": "runs/r-00000001"}, "config.runs_dir"),  # before: nested in another run's folder (201)
    ({"runs_dir": "elsewhere"}, "config.runs_dir"),
    ({"data_dir": "runs/r-00000001"}, "config.data_dir"),
    ({"data_dir": "./runs"}, "config.data_dir"),
])
def test_run_folders_are_chosen_by_the_service(api, config, field):
    r = api.post("/runs", json={"config": config}, headers=AUTH)
    assert r.status_code == 422 and _fields(r) == [field], r.text


def test_jobs_start_in_the_runs_own_folder(tmp_path, tether_redis):
    """A Ray job's working directory decides what a relative model name means: the entrypoint starts in the run's service folder,
    which holds only its tether.yaml."""
    jobs = RecordingJobs()
    with TestClient(_app(tmp_path, tether_redis.url, jobs=jobs)) as api:
        run = api.post("/runs", json={"config": {"name": "x"}}, headers=AUTH).json()
    (job_id, entry), = jobs.submitted
    folder = (tmp_path / "svc" / "service" / run["id"]).resolve()
    assert entry.startswith(f"cd {folder} && ") and job_id == f"tether-{run['id']}"
    assert sorted(p.name for p in folder.iterdir()) == ["tether.yaml"]


def test_paths_are_shown_relative_to_the_data_directory(api, tmp_path):
    """Before: GET /runs/{id} showed absolute server paths (config_path, config.data_dir, config.runs_dir, run_dir)."""
    run = api.post("/runs", json={"config": {"name": "x"}}, headers=AUTH).json()
    svc = str((tmp_path / "svc").resolve())
    for body in (run, api.get(f"/runs/{run['id']}", headers=AUTH).json()):
        assert svc not in json.dumps(body)
        assert body["config_path"] == f"service/{run['id']}/tether.yaml" and body["config"]["runs_dir"] == f"runs/{run['id']}"
    saved = yaml.safe_load(open(f"{svc}/service/{run['id']}/tether.yaml"))
    assert saved["runs_dir"] == f"{svc}/runs/{run['id']}"  # the trainer still gets absolute paths


# -- GET /runs: paged summaries ---------------------------------------------------------------------
def test_runs_are_paged_summaries_with_filters(api, tether_redis):
    from services.state.redis_store import RunStore

    store = RunStore(tether_redis.url)
    ids = [api.post("/runs", json={"config": {"name": f"sweep-{i}"}}, headers=AUTH).json()["id"] for i in range(5)]
    store.update_run(ids[1], state="running")
    big = {f"k{i}": "x" * 10 for i in range(5000)}  # a record with a large field: not part of any summary
    store.update_run(ids[2], config=big)
    page = api.get("/runs?limit=2", headers=AUTH).json()
    assert page["total"] == 5 and [r["id"] for r in page["runs"]] == ids[::-1][:2]  # newest first
    assert "config" not in page["runs"][0] and page["runs"][0]["algorithm"] == "ppo"
    assert [r["id"] for r in api.get("/runs?offset=4&limit=2", headers=AUTH).json()["runs"]] == [ids[0]]
    assert [r["id"] for r in api.get("/runs?state=running", headers=AUTH).json()["runs"]] == [ids[1]]
    assert api.get("/runs?state=running,queued", headers=AUTH).json()["total"] == 5
    assert [r["id"] for r in api.get("/runs?q=SWEEP-3", headers=AUTH).json()["runs"]] == [ids[3]]
    assert api.get(f"/runs?q={ids[4]}", headers=AUTH).json()["total"] == 1
    assert len(api.get("/runs", headers=AUTH).content) < 5_000
    for bad in ("limit=0", "limit=501", "offset=-1", "state=RUNNING", "state=a;b"):
        assert api.get(f"/runs?{bad}", headers=AUTH).status_code == 422, bad


# -- HTTP: HEAD, 415, CORS, docs --------------------------------------------------------------------
def test_head_wherever_get(api):
    """Before: HEAD / was 405."""
    run = api.post("/runs", json={"config": {"name": "x"}}, headers=AUTH).json()
    for path in ("/", "/healthz", "/runs", f"/runs/{run['id']}", f"/runs/{run['id']}/metrics", f"/runs/{run['id']}/commands",
                 "/presets", "/openapi.json", "/docs", "/static/vendor/plotly.min.js"):
        get, head = api.get(path, headers=AUTH), api.head(path, headers=AUTH)
        assert head.status_code == get.status_code == 200 and head.content == b"", path
        assert head.headers.get("content-type") == get.headers.get("content-type"), path
    assert api.head("/runs").status_code == 401 and api.head("/runs/r-nope", headers=AUTH).status_code == 404
    r = api.put("/runs", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD, POST"


def test_a_body_that_is_not_json_is_415(api):
    """Before: a text/plain body got 422."""
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {**AUTH, **({"Content-Type": ctype} if ctype else {})}
        r = api.post("/runs", content=b'{"config": {}}', headers=headers)
        assert r.status_code == 415 and "application/json" in r.json()["detail"], ctype
    assert api.post("/runs", content=b'{"config": {}}', headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}).status_code == 201
    assert api.get("/runs", headers=AUTH).json()["total"] == 1  # nothing stored by the refused ones


def test_cors_policy(tmp_path, tether_redis):
    """Before: no CORS policy; a preflight got 401."""
    with TestClient(_app(tmp_path, tether_redis.url, cors_origins=["https://console.lab.example"])) as api:
        pre = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
        r = api.options("/runs", headers={"Origin": "https://console.lab.example", **pre})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://console.lab.example"
        assert "authorization" in r.headers["access-control-allow-headers"].lower()
        r = api.options("/runs", headers={"Origin": "https://evil.example", **pre})
        assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
        r = api.get("/runs", headers={**AUTH, "Origin": "https://console.lab.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://console.lab.example"
        assert "access-control-allow-origin" not in api.get("/runs", headers={**AUTH, "Origin": "https://evil.example"}).headers


def test_api_docs_need_no_cdn(api):
    """Before: /docs and /redoc loaded their scripts and fonts from public CDNs (blank on an offline cluster)."""
    for page in ("/docs", "/redoc"):
        html = api.get(page).text
        assert not re.findall(r"(?:src|href)=[\"']?https?://", html) and "fonts.googleapis" not in html, page
        for asset in re.findall(r"(?:src|href)=[\"']?(/static/[^\"' >]+)", html) + re.findall(r"url: *'(/[^']+)'", html):
            assert api.get(asset).status_code == 200, asset
    assert api.get("/static/vendor/plotly.min.js").headers["content-type"].startswith("text/javascript")
    for path in ("/static/../api_token", "/static/%2e%2e/%2e%2e/tests/conftest.py", "/static/..%2f..%2fapi.py"):
        assert api.get(path).status_code in (401, 404), path


# -- trackers: where a run's metrics go is the operator's choice -----------------------------------
def test_tracker_destinations_are_the_services(tmp_path, tether_redis):
    with TestClient(_app(tmp_path, tether_redis.url, mlflow_uri="http://mlflow.lab.internal:5000")) as api:
        for tracking, field in (({"mlflow": {"enabled": True, "tracking_uri": "http://attacker.example"}}, "config.tracking"),
                                ({"mlflow": {"tracking_uri": "file:/etc"}}, "config.tracking"),
                                ({"wandb": {"enabled": True, "dir": "/tmp"}}, "config.tracking"),
                                ({"wandb": {"enabled": True, "mode": "online"}}, "config.tracking.wandb.mode")):
            r = api.post("/runs", json={"config": {"tracking": tracking}}, headers=AUTH)
            assert r.status_code == 422 and _fields(r) == [field], (tracking, r.text)
        r = api.post("/runs", json={"config": {"tracking": {"mlflow": {"enabled": True}, "wandb": {"enabled": True}}}}, headers=AUTH)
        assert r.status_code == 201, r.text
        saved = load_config(tmp_path / "svc" / r.json()["config_path"])
        assert saved.tracking.mlflow.tracking_uri == "http://mlflow.lab.internal:5000" and saved.tracking.wandb.mode == "offline"
    with TestClient(_app(tmp_path, tether_redis.url, wandb_online=True)) as api:
        r = api.post("/runs", json={"config": {"tracking": {"wandb": {"enabled": True, "mode": "online"}}}}, headers=AUTH)
        assert r.status_code == 201 and load_config(tmp_path / "svc" / r.json()["config_path"]).tracking.mlflow.tracking_uri is None


def test_serve_refuses_bad_console_flags(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    tether = str(Path(sys.executable).with_name("tether"))
    for flags, says in ((["--cors-origin", "*"], "--cors-origin takes an origin"), (["--cors-origin", "https://a.example/path"], "no path"),
                        (["--presets", str(tmp_path / "none")], "--presets")):
        out = subprocess.run([tether, "serve", "--no-ray", "--data-dir", str(tmp_path / "svc"), *flags], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode != 0 and says in out.stderr, (flags, out.stderr[-500:])
