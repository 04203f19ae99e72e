"""Commands and metrics between a running Trainer (LocalRoleSet, tiny task) and a real valkey-server."""
import json
import threading
import time

import pytest
from waiting import wait_for as _wait

from tasks.imdb.build import resolve
from services.driver.control import RunControl
from services.state.redis_store import EmbeddedRedis, RunStore
from actors.roleset import LocalRoleSet
from services.driver.train import Trainer

pytestmark = pytest.mark.slow


def _cfg(tiny_assets, *, iterations: int, elastic: bool = True):
    base = tiny_assets[0]
    return base.model_copy(update={
        "train": base.train.model_copy(update={"iterations": iterations, "eval_every": 1}),
        "elastic_reset": base.elastic_reset.model_copy(update={"enabled": elastic, "every": 1000}),
        "runtime": base.runtime.model_copy(update={"mode": "local", "engine": "transformers", "checkpoint_every": 0}),
        # the guard on, with an alarm that cannot fire (KL never reaches min_kl here): its action can be changed live
        "guard": base.guard.model_copy(update={"enabled": True, "action": "alert", "min_kl": 1e6}),
    })


def _start(trainer: Trainer) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def go():
        try:
            out["summary"] = trainer.run()
        except BaseException as e:  # noqa: BLE001 - surfaced by the test
            out["error"] = e

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, out




def _acked(store: RunStore, run_id: str, cid: str):
    return _wait(lambda: (store.command(run_id, cid) or {}).get("ack"), what=f"ack of {cid}")


def test_commands_pause_set_reset_resume_stop(tiny_assets, tmp_path, tether_redis):
    cfg = _cfg(tiny_assets, iterations=200)
    store = RunStore(tether_redis.url)
    store.create_run("r1", {"name": cfg.name})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    trainer.commands = RunControl(tether_redis.url, "r1", poll_interval_s=0.2)
    thread, out = _start(trainer)
    _wait(lambda: store.metrics("r1"), what="first metrics")

    # set: validated, applied through the roles, logged with its step
    cid = store.send_command("r1", "set", {"kl_coef": 0.5, "eval_every": 3})
    ack = _acked(store, "r1", cid)
    assert ack["ok"] and ack["result"]["kl_coef"]["new"] == 0.5 and ack["result"]["eval_every"] == {"old": 1, "new": 3}
    assert trainer.cfg.train.eval_every == 3
    changes = store.changes("r1")
    assert {c["param"] for c in changes} == {"kl_coef", "eval_every"} and all(c["step"] == ack["step"] for c in changes)
    nxt = _wait(lambda: [r for r in store.metrics("r1") if r["step"] == ack["step"] + 1 and "kl/coef" in r], what="next row")
    assert nxt[0]["kl/coef"] == pytest.approx(0.5)  # the beta used in the next iteration is the new one
    # refused: uwo_lambda needs aggregation uwo; training goes on
    bad = _acked(store, "r1", store.send_command("r1", "set", {"uwo_lambda": 0.3}))
    assert not bad["ok"] and "uwo_lambda" in bad["result"]
    # the guard's action, live (before: not a parameter): what the next alarm does
    ack = _acked(store, "r1", store.send_command("r1", "set", {"guard_action": "stop"}))
    assert ack["ok"] and ack["result"]["guard_action"] == {"old": "alert", "new": "stop"} and trainer.cfg.guard.action == "stop"
    assert _acked(store, "r1", store.send_command("r1", "set", {"guard_action": "alert"}))["ok"] and trainer.cfg.guard.action == "alert"
    assert [c["new"] for c in store.changes("r1") if c["param"] == "guard_action"] == ["stop", "alert"]

    # pause: the loop blocks, no new metrics, state "paused"
    ack = _acked(store, "r1", store.send_command("r1", "pause"))
    paused_at = ack["step"]
    _wait(lambda: store.get_run("r1")["state"] == "paused", what="state paused")
    time.sleep(1.5)
    assert max(r["step"] for r in store.metrics("r1")) == paused_at and trainer.iteration == paused_at
    # reset while paused: applied at once (EMA -> policy, then a weight sync)
    ack = _acked(store, "r1", store.send_command("r1", "reset"))
    assert ack["ok"] and ack["step"] == paused_at and trainer.roles.learner.learner.elastic.n_resets == 1
    assert trainer.roles.rollout.engine.policy_version == trainer.roles.learner_version()
    # resume: training continues
    _acked(store, "r1", store.send_command("r1", "resume"))
    _wait(lambda: max(r["step"] for r in store.metrics("r1")) > paused_at, what="training after resume")
    # stop: ends cleanly with a checkpoint and state "stopped"
    ack = _acked(store, "r1", store.send_command("r1", "stop"))
    thread.join(60)
    assert not thread.is_alive() and "error" not in out, out.get("error")
    rec = store.get_run("r1")
    assert rec["state"] == "stopped" and rec["iteration"] == ack["step"] < 200
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "stopped"
    assert trainer.latest_checkpoint().name == f"step-{ack['step']:06d}"
    assert all(c["ack"] for c in store.commands("r1"))


def test_redis_outage_loses_no_metrics(tiny_assets, tmp_path):
    cfg = _cfg(tiny_assets, iterations=8, elastic=False)
    server = EmbeddedRedis(tmp_path / "svc")
    url = server.start()
    store = RunStore(url)
    store.create_run("r2", {"name": cfg.name})
    trainer = Trainer(cfg, tmp_path / "run", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    control = RunControl(url, "r2")
    trainer.commands = control
    thread, out = _start(trainer)
    try:
        _wait(lambda: store.metrics("r2"), what="first metrics")
        server.stop()  # Redis goes away mid-run
        down_at = trainer.iteration
        _wait(lambda: trainer.iteration >= down_at + 2, what="training during the outage")
        assert thread.is_alive() and control.buffered >= 1  # (if training ended meanwhile, drain() waits for Redis)
        assert server.start() == url  # back on the same port (its data reloaded from the AOF)
        thread.join(120)
        assert not thread.is_alive() and "error" not in out, out.get("error")
        rows = store.metrics("r2")
        local = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [r["step"] for r in local] == [1, 2, 3, 4, 5, 6, 7, 8, 8]
        assert len({r["id"] for r in rows}) == len(rows)
        for got, want in zip(rows, local):
            assert got.get("reward/gold_mean") == pytest.approx(want.get("reward/gold_mean"), nan_ok=True)
        assert store.get_run("r2")["state"] == "finished" and control.buffered == 0
    finally:
        server.stop()
