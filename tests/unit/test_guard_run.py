"""The guard inside real (tiny, local-mode) runs: signals at every evaluation, and each action (alert, stop, reset)."""
import json

import pytest

from actors.roleset import LocalRoleSet
from services.state.runlog import read_metrics
from services.driver.train import Trainer, train
from tasks.imdb.build import resolve


def _cfg(base, *, iterations=6, **guard):
    return base.model_copy(update={
        "train": base.train.model_copy(update={"iterations": iterations, "eval_every": 2}),
        "runtime": base.runtime.model_copy(update={"mode": "local", "engine": "transformers", "checkpoint_every": 0, "keep_checkpoints": 3}),
        "guard": base.guard.model_copy(update=guard),
    })


def _evals(run_dir):
    return [r for r in read_metrics(run_dir) if "eval/gold_mean" in r]


def test_signals_are_logged_at_every_evaluation_and_the_disabled_guard_acts_never(tiny_assets, tmp_path):
    cfg = _cfg(tiny_assets[0], iterations=4, signal="distinct2_ratio", threshold=5.0, min_kl=0.01)  # would warn always; disabled
    assert not cfg.guard.enabled
    train(cfg, tmp_path / "run", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    ev = _evals(tmp_path / "run")
    assert len(ev) == 3 and all("guard/distinct2_ratio" in r and "guard/ppl_ratio" in r and "guard/disagreement" in r for r in ev)
    assert ev[0]["guard/distinct2_ratio"] == pytest.approx(1.0)  # relative to the run's own first evaluation (pi_0)
    assert not any("guard/alarm" in r or "guard/alarm_event" in r for r in ev)
    state = json.loads((tmp_path / "run" / "guard.json").read_text())
    assert [h["step"] for h in state["history"]] == [0, 2, 4] and state["enabled"] is False and state["alarm"] is None
    assert "guard" not in json.loads((tmp_path / "run" / "summary.json").read_text())


def test_stop_ends_the_run_and_records_the_checkpoint_it_judges_best(tiny_assets, tmp_path):
    cfg = _cfg(tiny_assets[0], iterations=8, enabled=True, action="stop", signal="distinct2_ratio", threshold=5.0, min_kl=0.01)
    summary = train(cfg, tmp_path / "run", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    # the first evaluation (iteration 0, KL about 0 < min_kl) cannot warn; the second (iteration 2) raises the alarm, iteration 2 runs, then the stop
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status == {"state": "stopped", "iteration": 3}
    g = summary["guard"]
    assert g["iteration"] == 2 and g["pick_iteration"] == 0 and g["action"] == "stop"
    assert g["pick_checkpoint"].endswith("checkpoints/step-000000") and (tmp_path / "run" / "checkpoints" / "step-000000" / "learner.pt").exists()
    ev = _evals(tmp_path / "run")
    assert ev[-1]["guard/alarm_event"] == 1.0 and ev[-1]["guard/alarm"] == 1.0 and ev[0]["guard/alarm"] == 0.0


def test_reset_returns_to_the_picked_checkpoint_and_rearms(tiny_assets, tmp_path):
    import torch

    cfg = _cfg(tiny_assets[0], iterations=6, enabled=True, action="reset", signal="distinct2_ratio", threshold=5.0, min_kl=0.01)
    roles = LocalRoleSet(cfg, resolve(cfg))
    tr = Trainer(cfg, tmp_path / "run", progress=False, roles=roles)
    initial = {k: v.clone() for k, v in roles.learner.learner.policy_state_dict().items()}  # iteration 0's policy: pi_0
    seen = {}
    real_load = roles.load

    def load(path):
        seen.setdefault("loaded", []).append(path)
        real_load(path)
        seen["after"] = {k: v.clone() for k, v in roles.learner.learner.policy_state_dict().items()}
    roles.load = load
    tr.run()
    assert seen["loaded"][0].endswith("step-000000/learner.pt")
    ev = _evals(tmp_path / "run")
    # always warning: an alarm at iteration 2, a return to iteration 0's checkpoint; re-armed, a fresh warning at 4 resets again (to the
    # last trusted evaluation, still 0); the final evaluation records but never acts
    assert [r.get("guard/reset", 0.0) for r in ev] == [0.0, 1.0, 1.0, 0.0]
    assert [p.rsplit("/", 2)[-2] for p in seen["loaded"]] == ["step-000000", "step-000000"]
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "finished"
    assert all(torch.equal(seen["after"][k], initial[k]) for k in initial)  # the reset put pi_0's weights back


def test_alert_reaches_the_service_record(tiny_assets, tmp_path, tether_redis):
    from services.driver.control import RunControl
    from services.state.redis_store import RunStore

    cfg = _cfg(tiny_assets[0], iterations=4, enabled=True, action="alert", signal="distinct2_ratio", threshold=5.0, min_kl=0.01)
    store = RunStore(tether_redis.url)
    store.create_run("r-g", {"name": cfg.name, "config": {}})
    tr = Trainer(cfg, tmp_path / "run", progress=False, roles=LocalRoleSet(cfg, resolve(cfg)))
    tr.commands = RunControl(store, "r-g", poll_interval_s=0.1)
    tr.run()
    rec = store.get_run("r-g")
    assert rec["state"] == "finished" and rec["guard"]["iteration"] == 2 and rec["guard"]["action"] == "alert"
    assert rec["guard"]["pick_iteration"] == 0 and "distinct2_ratio <" in rec["guard"]["rule"]
    assert any(r.get("guard/alarm_event") == 1.0 for r in store.metrics("r-g"))
