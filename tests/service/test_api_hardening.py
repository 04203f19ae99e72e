"""Defects a hostile test found in the REST API, each provoked again here against a real valkey-server:
non-finite numbers, unbounded configs, ids and stream ids that reached Redis, authentication after the
body was read, no body limit, 500s and a 200 health check while Redis was down, and the queue."""
import asyncio
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from services.server.api import ServiceSettings, create_app
from services.server.api_security import Gate
from services.server.scheduler import Scheduler

TOKEN = "hardening-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _app(tmp_path, redis_url, **kw):
    return create_app(ServiceSettings(data_dir=tmp_path / "svc", redis_url=redis_url, token=TOKEN, jobs=None, **kw))


@pytest.fixture
def api(tmp_path, tether_redis):
    with TestClient(_app(tmp_path, tether_redis.url)) as client:
        yield client


def _fields(resp) -> list[str]:
    return [d["field"] for d in resp.json()["detail"]]


# -- 3. numbers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, field", [
    ('{"config": {"kl": {"coef": 1e309}}}', "config.kl.coef"),
    ('{"config": {"kl": {"coef": -1e309}}}', "config.kl.coef"),
    ('{"config": {"ppo": {"lr": NaN}}}', "config.ppo.lr"),
    ('{"config": {"generation": {"temperature": Infinity}}}', "config.generation.temperature"),
    ('{"config": {"train": {"seed": 1180591620717411303424}}}', "config.train.seed"),
])
def test_non_finite_and_huge_numbers_in_a_config_are_422(api, raw, field):
    r = api.post("/runs", content=raw, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 422 and field in _fields(r), r.text
    assert api.get("/runs", headers=AUTH).json()["runs"] == []  # nothing stored


def test_non_finite_params_are_422(api):
    store = api.app.state.store
    store.create_run("r-params", {"name": "x", "config": {}, "state": "running"})
    for raw in ('{"kl_coef": 1e309}', '{"kl_coef": NaN}', '{"uwo_lambda": -Infinity}'):
        r = api.patch("/runs/r-params/params", content=raw, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 422, (raw, r.text)
    assert store.commands("r-params") == []  # nothing reached the trainer


# -- 2. bounds and the cluster ---------------------------------------------------------------------
@pytest.mark.parametrize("config, field, needle", [
    ({"train": {"iterations": 10**9}}, "config.train.iterations", "above this service's limit 5000"),
    ({"generation": {"max_new_tokens": 100_000}}, "config.generation.max_new_tokens", "--limit generation.max_new_tokens"),
    ({"runtime": {"kv_cache_gib": 4096}}, "config.runtime.kv_cache_gib", "limit 16"),
    ({"policy": {"pretrain_tokens": 10**12}}, "config.policy.pretrain_tokens", "limit 2e+07"),
    ({"runtime": {"ray_address": "10.0.0.1:6379"}}, "config.runtime", "service decides which Ray cluster"),
])
def test_configs_beyond_the_service_bounds_are_422(api, config, field, needle):
    r = api.post("/runs", json={"config": config}, headers=AUTH)
    assert r.status_code == 422 and field in _fields(r) and needle in r.json()["message"], r.text
    assert api.get("/runs", headers=AUTH).json()["runs"] == []


def test_limits_are_configurable(tmp_path, tether_redis):
    with TestClient(_app(tmp_path, tether_redis.url, limits={"train.iterations": 3})) as c:
        r = c.post("/runs", json={"config": {"train": {"iterations": 4}}}, headers=AUTH)
        assert r.status_code == 422 and "limit 3" in r.json()["message"]


# -- 3. ids and stream ids that reached Redis --------------------------------------------------------
def test_ids_and_query_numbers_are_validated_before_redis(api):
    store = api.app.state.store
    store.create_run("r-ids", {"name": "x", "config": {}, "state": "running"})
    store.add_metrics("r-ids", "1-1", 1, {"reward/gold_mean": 0.5})
    for path in ("/runs/r-ids:metrics", "/runs/r-ids:metrics/metrics", "/runs/r-ids:commands/commands", "/runs/" + "a" * 65,
                 "/runs/r-ids/metrics?to_step=18446744073709551616", "/runs/r-ids/metrics?from_step=-1",
                 "/runs/r-ids/metrics?count=0", "/runs/r-ids/metrics/stream?after=bogus", "/runs/r-ids/metrics/stream?after=1-2-3"):
        r = api.get(path, headers=AUTH)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
    for bad in ("garbage", "99999999999999999999999", "1-99999999999999999999999", "1:2"):
        r = api.get("/runs/r-ids/metrics/stream", headers={**AUTH, "Last-Event-ID": bad})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"], (bad, r.text)
    assert [m["step"] for m in api.get("/runs/r-ids/metrics", params={"to_step": 2**53}, headers=AUTH).json()] == [1]


def test_every_stream_id_the_schema_allows_is_accepted(api):
    """Schemathesis found `after=52727-78297190311141076720`: allowed by the schema (20 digits), answered 400 by the parser
    (above 2^64). Now such a number reads as 2^64 - 1: nothing after it, the stream of a finished run just ends."""
    from services.server.streams import U64, parse_stream_id

    assert parse_stream_id("52727-78297190311141076720", where="after") == f"52727-{U64}"
    assert parse_stream_id("99999999999999999999", where="after") == str(U64)
    store = api.app.state.store
    store.create_run("r-big", {"name": "x", "config": {}, "state": "finished"})
    store.add_metrics("r-big", "1-1", 1, {"reward/gold_mean": 0.5})
    for after in ("52727-78297190311141076720", "99999999999999999999", "0"):
        r = api.get("/runs/r-big/metrics/stream", params={"after": after}, headers=AUTH)
        assert r.status_code == 200, (after, r.text)
        assert "event: end" in r.text and ("event: metrics" in r.text) == (after == "0")


# -- 5. authentication before work; a body limit for everyone ---------------------------------------
def test_the_gate_answers_401_without_reading_the_body():
    """At the ASGI level: a protected path without a token is refused before `receive` is called once."""
    reached = []

    async def app(scope, receive, send):  # the service behind the gate; must never be reached
        reached.append(scope["path"])

    gate = Gate(app, token="t", max_body=100)
    for headers, status in (([], 401), ([(b"authorization", b"Bearer nope")], 403), ([(b"authorization", b"Basic dDp0")], 401)):
        received, sent = [], []

        async def receive():
            received.append(1)
            return {"type": "http.request", "body": b"x" * 10**6, "more_body": True}

        async def send(msg):
            sent.append(msg)

        scope = {"type": "http", "path": "/runs", "method": "POST", "headers": [(b"content-length", b"300000000"), *headers]}
        asyncio.run(gate(scope, receive, send))
        assert received == [] and sent[0]["status"] == status and reached == []
        assert "bearer token" in json.loads(sent[1]["body"])["detail"]


def test_body_limit_413_with_and_without_content_length(api):
    big = b'{"config": {"name": "' + b"x" * (2 * 1024 * 1024) + b'"}}'
    r = api.post("/runs", content=big, headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than this service accepts" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit counts what arrives
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    r = api.post("/runs", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than this service accepts" in r.json()["detail"]
    r = api.post("/runs", content=big, headers={"Content-Type": "application/json"})  # no token: 401 comes first
    assert r.status_code == 401
    assert api.get("/runs", headers=AUTH).json()["runs"] == []


def test_docs_are_public_and_say_so(api):
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert api.get(path).status_code == 200, path
    assert "but /healthz, /, /static/ and the API docs" in api.get("/openapi.json").json()["info"]["description"]


# -- 6. outages --------------------------------------------------------------------------------------
def test_redis_down_gives_503_with_a_reason_and_health_503(tmp_path, tether_redis):
    with TestClient(_app(tmp_path, tether_redis.url)) as api:
        api.app.state.store.create_run("r-out", {"name": "x", "config": {}, "state": "running"})
        assert api.get("/healthz").status_code == 200
        tether_redis.stop()
        try:
            h = api.get("/healthz")
            assert h.status_code == 503 and h.json()["ok"] is False and "Redis is unreachable" in h.json()["reason"]
            for method, path, body in (("get", "/runs", None), ("get", "/runs/r-out", None), ("get", "/runs/r-out/metrics", None),
                                       ("post", "/runs/r-out/pause", None), ("patch", "/runs/r-out/params", {"kl_coef": 0.1}),
                                       ("post", "/runs", {"config": {"name": "x"}}), ("get", "/runs/r-out/metrics/stream", None)):
                r = getattr(api, method)(path, headers=AUTH, **({"json": body} if body else {}))
                assert r.status_code == 503 and "Redis is unreachable" in r.json()["detail"], (path, r.status_code, r.text)
        finally:
            tether_redis.start()
        assert api.get("/healthz").status_code == 200 and api.get("/runs/r-out", headers=AUTH).json()["state"] == "running"


# -- 2. the queue (ordering and limits; the Ray-backed admission is in test_api_ray.py) ---------------
def test_queue_admits_in_order_within_max_runs_and_cancels(tmp_path, tether_redis):
    from services.state.redis_store import RunStore

    store = RunStore(tether_redis.url)
    submitted = []
    sched = Scheduler(store, None, lambda rec: submitted.append(rec["id"]), max_runs=2)
    for i in range(5):
        store.create_run(f"r-{i}", {"name": "x", "config": {}, "state": "queued", "resources": {"CPU": 2.0, "GPU": 0.0}})
        sched.enqueue(f"r-{i}")
    assert sched.tick() == ["r-0", "r-1"] and sched.positions() == {"r-2": 1, "r-3": 2, "r-4": 3}
    assert [store.get_run(f"r-{i}")["state"] for i in range(5)] == ["submitted"] * 2 + ["queued"] * 3
    assert sched.tick() == []  # still two active
    assert sched.cancel("r-3") and store.get_run("r-3")["state"] == "cancelled" and not sched.cancel("r-0")
    store.update_run("r-1", state="finished")
    assert sched.tick() == ["r-2"] and sched.positions() == {"r-4": 1}
    store.update_run("r-0", state="failed")
    store.update_run("r-2", state="stopped")
    assert sched.tick() == ["r-4"] and submitted == ["r-0", "r-1", "r-2", "r-4"]

    def broken(rec):
        raise RuntimeError("dashboard says no")

    store.create_run("r-9", {"name": "x", "config": {}, "state": "queued", "resources": {"CPU": 1.0}})
    Scheduler(store, None, broken).enqueue("r-9")
    Scheduler(store, None, broken).tick()
    assert store.get_run("r-9")["state"] == "submit_failed" and "dashboard says no" in store.get_run("r-9")["error"]


def test_concurrent_ticks_admit_each_run_once(tmp_path, tether_redis):
    """Two service replicas (two schedulers on one Redis) ticking at once never submit a run twice."""
    from services.state.redis_store import RunStore

    submitted, lock = [], threading.Lock()

    def submit(rec):
        time.sleep(0.01)
        with lock:
            submitted.append(rec["id"])

    a, b = (Scheduler(RunStore(tether_redis.url), None, submit, max_runs=100) for _ in range(2))
    for i in range(30):
        a.store.create_run(f"r-{i}", {"name": "x", "config": {}, "state": "queued", "resources": {"CPU": 1.0}})
        a.enqueue(f"r-{i}")
    ts = [threading.Thread(target=lambda s=s: [s.tick() for _ in range(20)]) for s in (a, b)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert sorted(submitted) == sorted(f"r-{i}" for i in range(30)) and len(submitted) == 30


def test_a_run_known_only_from_its_trainer_is_served_whole(api):
    """`tether train --run-id X --redis-url ...` started by hand: the trainer registers X, and a record written
    only by a trainer (an older one, or a lost create) is served, never a 500."""
    from services.driver.control import RunControl

    store = api.app.state.store
    store.update_run("r-partial", state="running", iteration=3)  # fields of a trainer, no id/name/created
    r = api.get("/runs/r-partial", headers=AUTH)
    assert r.status_code == 200 and r.json()["id"] == r.json()["name"] == "r-partial" and r.json()["iteration"] == 3
    ctl = RunControl(store, "r-hand")
    ctl.register(name="by-hand", config={"name": "by-hand"})
    ctl.register(name="again", config={})  # an existing record is kept
    runs = {x["id"]: x for x in api.get("/runs", headers=AUTH).json()["runs"]}
    assert runs["r-hand"]["name"] == "by-hand" and runs["r-hand"]["state"] == "submitted"


def test_a_run_cancelled_while_being_admitted_is_not_submitted(tether_redis):
    """Another replica cancels the head of the queue between the read and the admission: nothing is submitted."""
    from services.state.redis_store import RunStore

    store, submitted = RunStore(tether_redis.url), []
    other = Scheduler(RunStore(tether_redis.url), None, None)

    class Racing(Scheduler):
        def _fits(self, need, active, holding):
            other.cancel("r-race")
            return True

    store.create_run("r-race", {"name": "x", "config": {}, "state": "queued", "resources": {"CPU": 1.0}})
    sched = Racing(store, None, lambda rec: submitted.append(rec["id"]))
    sched.enqueue("r-race")
    assert sched.tick() == [] and submitted == [] and store.get_run("r-race")["state"] == "cancelled"


def test_a_tick_reads_only_live_runs(tether_redis):
    """The scheduler follows admitted runs until their job ends, not the whole history of runs."""
    from services.state.redis_store import RunStore
    from services.state.redis_store import LIVE

    store = RunStore(tether_redis.url)
    for i in range(50):  # history: finished runs whose jobs ended long ago
        store.create_run(f"old-{i}", {"name": "x", "config": {}, "state": "finished", "job_status": "SUCCEEDED"})
    sched = Scheduler(store, None, lambda rec: None)
    store.create_run("r-new", {"name": "x", "config": {}, "state": "queued", "resources": {"CPU": 1.0}})
    sched.enqueue("r-new")
    assert sched.tick() == ["r-new"] and store.r.smembers(LIVE) == {"r-new"}
    store.update_run("r-new", state="failed", job_status="FAILED")
    sched.tick()
    assert store.r.smembers(LIVE) == set()


@pytest.mark.parametrize("item, needle", [
    ("train.iterations", "takes FIELD=MAX"), ("train.nope=3", "takes FIELD=MAX"), ("train.iterations=lots", "must be a number"),
    ("train.iterations=inf", "finite number > 0"), ("train.iterations=nan", "finite number > 0"), ("train.iterations=0", "finite number > 0"),
])
def test_bad_limit_flags_are_refused_with_what_is_accepted(item, needle):
    from services.server.api_models import parse_limits

    with pytest.raises(ValueError, match=needle):
        parse_limits([item])
    assert parse_limits(["train.iterations=7"])["train.iterations"] == 7.0


def test_run_folders_cannot_be_the_services_own_and_resources_are_bounded(api):
    """Before: data_dir / runs_dir could name the service's Redis folder, its token file, the run configs' folder, '' or a
    NUL byte (201); runtime.rollout.num_cpus 1e300 was queued (and would hold the strict queue); 90,000 resource keys were
    accepted."""
    for field, value in (("data_dir", "redis"), ("runs_dir", "api_token"), ("runs_dir", "./service/r-1"), ("data_dir", ""),
                         ("runs_dir", "."), ("data_dir", "a\x00b")):
        r = api.post("/runs", json={"config": {field: value}}, headers=AUTH)
        assert r.status_code == 422 and field in r.text, (field, value, r.text)
    r = api.post("/runs", json={"config": {"runtime": {"rollout": {"num_cpus": 1e300}}}}, headers=AUTH)
    assert r.status_code == 422 and "runtime.rollout.num_cpus" in r.text and "limit" in r.text
    r = api.post("/runs", json={"config": {"runtime": {"reward": {"resources": {f"r{i}": 1 for i in range(90)}}}}}, headers=AUTH)
    assert r.status_code == 422 and "at most 16 custom Ray resources" in r.text
    assert api.post("/runs", json={"config": {"runs_dir": "runs", "runtime": {"rollout": {"num_cpus": 2}}}}, headers=AUTH).status_code == 201
