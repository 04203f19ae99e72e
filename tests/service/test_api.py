"""The REST API against a real valkey-server: auth, validation, commands reaching a running trainer, SSE."""
import json
import threading

import pytest
from waiting import wait_for as _wait
import yaml
from fastapi.testclient import TestClient

from tasks.imdb.build import resolve
from services.server.api import ServiceSettings, create_app
from services.driver.control import RunControl
from actors.roleset import LocalRoleSet
from services.driver.train import Trainer

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def api(tmp_path, tether_redis):
    app = create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=tether_redis.url, token=TOKEN, jobs=None))
    with TestClient(app) as client:
        yield client, app.state.store


def _fields(resp) -> list[str]:
    return [d["field"] for d in resp.json()["detail"]]


def test_auth_401_403_and_health(api):
    client, _ = api
    assert client.get("/healthz").json() == {"ok": True, "redis": True, "reason": None}
    r = client.get("/runs")
    assert r.status_code == 401 and "missing bearer token" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"
    r = client.get("/runs", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 403 and "invalid bearer token" in r.json()["detail"]
    for method, path in (("post", "/runs"), ("post", "/runs/x/pause"), ("patch", "/runs/x/params"), ("get", "/runs/x/metrics"),
                         ("get", "/runs/x/metrics/stream"), ("get", "/runs/x/report"), ("get", "/runs/x/checkpoints"), ("get", "/runs/x/samples")):
        assert getattr(client, method)(path).status_code == 401, path
    assert client.get("/runs", headers=AUTH).json()["runs"] == []
    assert client.get("/runs/nope", headers=AUTH).status_code == 404


@pytest.mark.parametrize("config, field", [
    ({"kl": {"coef": -1}}, "config.kl.coef"),
    ({"kl": {"cof": 1}}, "config.kl.cof"),
    ({"data_dir": "/etc"}, "config.data_dir"),
    ({"runs_dir": "runs/../../x"}, "config.runs_dir"),
    ({"policy": {"name_or_path": "/root/evil"}}, "config.policy"),
    ({"variants": {"a": {}}}, "config.variants"),
])
def test_invalid_config_422_names_the_field(api, config, field):
    client, store = api
    r = client.post("/runs", json={"config": config}, headers=AUTH)
    assert r.status_code == 422 and field in _fields(r), r.json()
    assert field in r.json()["message"]
    assert store.list_runs() == []


def test_create_without_ray_queues_the_run_inside_the_data_dir(api, tmp_path):
    """`tether serve --no-ray`: runs are stored and wait queued, in order, for a replica with Ray; stop cancels a queued run."""
    client, store = api
    r = client.post("/runs", json={"config": {"name": "t1", "data_dir": "data", "runs_dir": "runs"}}, headers=AUTH)
    assert r.status_code == 201 and r.json()["state"] == r.json()["status"] == "queued" and r.json()["queue_position"] == 1
    r2 = client.post("/runs", json={"config": {"name": "t2"}}, headers=AUTH).json()
    assert r2["queue_position"] == 2 and r2["resources"] == {"CPU": 2.0, "GPU": 0.0}
    run = client.get(f"/runs/{r.json()['id']}", headers=AUTH).json()
    assert not run["config_path"].startswith("/") and not run["config"]["data_dir"].startswith("/")  # no server layout shown
    svc = str((tmp_path / "svc").resolve())
    stored = yaml.safe_load(open(f"{svc}/{run['config_path']}"))
    assert stored["data_dir"] == f"{svc}/data" and stored["runs_dir"] == f"{svc}/runs/{run['id']}"
    # a queued run has not started: pause / resume / reset / params answer 409 (before: 202, replayed when it started)
    for method, path, body in (("post", "pause", None), ("post", "resume", None), ("patch", "params", {"kl_coef": 0.1})):
        r = client.request(method.upper(), f"/runs/{run['id']}/{path}", json=body, headers=AUTH)
        assert r.status_code == 409 and "queued (not started)" in r.json()["detail"], (path, r.text)
    assert client.get(f"/runs/{run['id']}/commands", headers=AUTH).json() == []
    assert client.post(f"/runs/{run['id']}/stop", headers=AUTH).json()["command_id"] == "cancelled"
    assert client.get(f"/runs/{run['id']}", headers=AUTH).json()["state"] == "cancelled"
    assert client.get(f"/runs/{r2['id']}", headers=AUTH).json()["queue_position"] == 1
    assert client.post(f"/runs/{run['id']}/pause", headers=AUTH).status_code == 409  # a cancelled run takes no commands


@pytest.mark.slow
def test_commands_reach_a_running_trainer_and_sse_streams(api, tiny_assets, tmp_path):
    client, store = api
    base = tiny_assets[0]
    cfg = base.model_copy(update={
        "train": base.train.model_copy(update={"iterations": 200, "eval_every": 1}),
        "runtime": base.runtime.model_copy(update={"mode": "local", "engine": "transformers", "checkpoint_every": 2}),
    })
    store.create_run("r-local", {"name": cfg.name, "config": cfg.model_dump(mode="json")})
    trainer = Trainer(cfg, tmp_path / "svc" / "runs" / "r-local", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    trainer.commands = RunControl(store, "r-local", poll_interval_s=0.2)
    thread = threading.Thread(target=trainer.run, daemon=True)
    thread.start()
    try:
        # SSE: the history first, then live rows, as 'metrics' events with stream ids
        events = []
        with client.stream("GET", "/runs/r-local/metrics/stream", params={"max_events": 3}, headers=AUTH) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kinds = []
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                elif line.startswith("data: ") and kinds[-1] == "metrics":
                    events.append(json.loads(line[6:]))
        assert kinds[0] == "state"  # the run's state comes first
        assert [e["step"] for e in events] == [1, 2, 3] and all("reward/gold_mean" in e for e in events)

        # invalid params: 422 naming the field; kl_target on this adaptive run is fine, uwo_lambda is not
        r = client.patch("/runs/r-local/params", json={"kl_coef": "lots"}, headers=AUTH)
        assert r.status_code == 422 and _fields(r) == ["kl_coef"]
        r = client.patch("/runs/r-local/params", json={"uwo_lambda": 0.2}, headers=AUTH)  # well-formed, but not this run's: 409
        assert r.status_code == 409 and r.json()["detail"].startswith("uwo_lambda: applies only to ensemble.aggregation 'uwo'")
        assert client.patch("/runs/r-local/params", json={}, headers=AUTH).status_code == 422
        assert client.post("/runs/r-local/reset", headers=AUTH).status_code == 409  # no Elastic Reset in this config

        r = client.patch("/runs/r-local/params", json={"kl_coef": 0.3, "kl_target": 2.5}, headers=AUTH)
        assert r.status_code == 202
        cid = r.json()["command_id"]
        cmd = _wait(lambda: next((c for c in client.get("/runs/r-local/commands", headers=AUTH).json() if c["id"] == cid and c["ack"]), None))
        assert cmd["ack"]["ok"] and cmd["ack"]["result"]["kl_target"]["new"] == 2.5
        changes = client.get("/runs/r-local/changes", headers=AUTH).json()
        assert {c["param"] for c in changes} == {"kl_coef", "kl_target"} and all(c["step"] == cmd["ack"]["step"] for c in changes)

        assert client.post("/runs/r-local/pause", headers=AUTH).status_code == 202
        _wait(lambda: client.get("/runs/r-local", headers=AUTH).json()["status"] == "paused")
        assert client.post("/runs/r-local/resume", headers=AUTH).status_code == 202
        _wait(lambda: client.get("/runs/r-local", headers=AUTH).json()["status"] == "running")
        _wait(lambda: trainer.iteration >= 4)
        assert client.post("/runs/r-local/stop", headers=AUTH).status_code == 202
        thread.join(60)
        run = client.get("/runs/r-local", headers=AUTH).json()
        assert not thread.is_alive() and run["status"] == "stopped" and 4 <= run["iteration"] < 200

        hist = client.get("/runs/r-local/metrics", params={"from_step": 2, "to_step": 3}, headers=AUTH).json()
        assert [h["step"] for h in hist] == [2, 3]
        ckpts = client.get("/runs/r-local/checkpoints", headers=AUTH).json()
        assert ckpts and ckpts[-1]["step"] == run["iteration"]
        # the samples of the evaluation at iteration 0 (logged in the metrics row of step 1), best by proxy first
        page = client.get("/runs/r-local/samples", params={"step": 0, "order": "proxy"}, headers=AUTH).json()
        row0 = client.get("/runs/r-local/metrics", params={"from_step": 1, "to_step": 1}, headers=AUTH).json()[0]
        assert page["step"] == 0 and page["steps"][0] == 0 and page["total"] == len(page["samples"]) > 0
        proxies = [x["proxy"] for x in page["samples"]]
        assert proxies == sorted(proxies, reverse=True)
        assert sum(x["gold"] for x in page["samples"]) / page["total"] == pytest.approx(row0["eval/gold_mean"], abs=1e-5)
        assert client.get("/runs/r-local/samples", headers=AUTH).json()["step"] == page["steps"][-1]  # default: the latest
        assert client.get("/runs/r-local/report", headers=AUTH).status_code == 409  # written by `tether train` at the end
        from services.driver.report import write_run_report

        write_run_report(trainer.run_dir, cfg.name)
        r = client.get("/runs/r-local/report", headers=AUTH)
        assert r.status_code == 200 and "<html" in r.text.lower()
        # the stream of a finished run ends by itself with an 'end' event
        with client.stream("GET", "/runs/r-local/metrics/stream", params={"after": "$"}, headers=AUTH) as r:
            body = "".join(r.iter_text())
        assert "event: end" in body and '"state": "stopped"' in body
    finally:
        if thread.is_alive():
            store.send_command("r-local", "stop")
            thread.join(60)


def _samples_run(store, tmp_path, rows_by_step: dict[int, list]):
    d = tmp_path / "svc" / "runs" / "r-s" / "main"
    (d / "samples").mkdir(parents=True)
    for step, rows in rows_by_step.items():
        (d / "samples" / f"step-{step:06d}.jsonl").write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows))
    store.create_run("r-s", {"name": "s", "config": {}, "state": "running", "run_dir": str(d)})
    return d


def test_samples_endpoint_orders_and_rejects_bad_steps(api, tmp_path):
    client, store = api
    store.create_run("r-new", {"name": "n", "config": {}, "state": "queued"})
    r = client.get("/runs/r-new/samples", headers=AUTH)
    assert r.status_code == 409 and "no samples yet" in r.json()["detail"]
    s = lambda p, g, m: {"prompt": "p", "response": f"r{p}", "proxy": p, "proxy_members": m, "gold": g}  # noqa: E731
    _samples_run(store, tmp_path, {0: [s(0.0, 0.0, [0.0])], 4: [s(1.0, 1.0, [1.0, 1.1]), s(3.0, -2.0, [3.0, 2.9]), s(2.0, 2.0, [2.0, 2.2]),
                                                              '{"prompt": "cut by a cra', s(float("nan"), 0.0, [0.0])]})
    page = client.get("/runs/r-s/samples", headers=AUTH).json()
    assert page["step"] == 4 and page["steps"] == [0, 4] and page["total"] == 3  # the cut line and the NaN proxy are left out
    assert [x["response"] for x in page["samples"]] == ["r1.0", "r3.0", "r2.0"]
    by = lambda order: [x["response"] for x in client.get("/runs/r-s/samples", params={"order": order}, headers=AUTH).json()["samples"]]  # noqa: E731
    assert by("proxy") == ["r3.0", "r2.0", "r1.0"] and by("proxy_low") == ["r1.0", "r2.0", "r3.0"]
    assert by("disagreement")[0] == "r3.0"  # proxy's best, gold's worst
    assert len(client.get("/runs/r-s/samples", params={"count": 1}, headers=AUTH).json()["samples"]) == 1
    r = client.get("/runs/r-s/samples", params={"step": 2}, headers=AUTH)
    assert r.status_code == 404 and "evaluated steps: 0, 4" in r.json()["detail"]
    for bad in ({"step": -1}, {"order": "best"}, {"count": 0}):
        assert client.get("/runs/r-s/samples", params=bad, headers=AUTH).status_code == 422, bad
    store.create_run("r-out", {"name": "o", "config": {}, "state": "running", "run_dir": "/etc"})
    assert client.get("/runs/r-out/samples", headers=AUTH).status_code == 404  # a folder outside the data directory is never read


def test_the_service_guard_default_reaches_the_saved_and_loaded_config(api, tmp_path):
    """Before: create_run re-validated only the fields the client set, so the service's guard default (on) never reached
    tether.yaml and the trainer loaded guard.enabled False; a guard section with only an action turned it off too."""
    from learner.config import load_config

    client, _ = api
    for guard, enabled in ((None, True), ({"action": "stop"}, True), ({"enabled": False}, False)):
        cfg = {"name": "g"} if guard is None else {"name": "g", "guard": guard}
        r = client.post("/runs", json={"config": cfg}, headers=AUTH)
        assert r.status_code == 201, r.text
        path = tmp_path / "svc" / client.get(f"/runs/{r.json()['id']}", headers=AUTH).json()["config_path"]
        saved = yaml.safe_load(open(path))
        assert saved["guard"]["enabled"] is enabled and load_config(path).guard.enabled is enabled, (guard, saved.get("guard"))
        if guard == {"action": "stop"}:
            assert load_config(path).guard.action == "stop"


def test_commands_that_change_nothing_answer_409(api):
    """pause on a paused run, resume on a running one (counting commands not yet taken): 409, nothing queued (before: 202)."""
    client, store = api
    store.create_run("r-run", {"name": "r", "state": "running", "config": {}})
    assert client.post("/runs/r-run/resume", headers=AUTH).status_code == 409
    assert client.post("/runs/r-run/pause", headers=AUTH).status_code == 202
    r = client.post("/runs/r-run/pause", headers=AUTH)  # the first pause is not taken yet: a second changes nothing
    assert r.status_code == 409 and "paused already" in r.json()["detail"]
    assert client.post("/runs/r-run/resume", headers=AUTH).status_code == 202  # undoes the pending pause
    assert [c["type"] for c in store.commands("r-run")] == ["pause", "resume"]
    store.update_run("r-run", state="paused")
    store.ack_command("r-run", store.commands("r-run")[0]["id"], ok=True, step=1, result="paused")
    store.ack_command("r-run", store.commands("r-run")[1]["id"], ok=True, step=1, result="running")
    assert client.post("/runs/r-run/pause", headers=AUTH).status_code == 409
    assert client.post("/runs/r-run/resume", headers=AUTH).status_code == 202
