"""Warm actors across sweep cells (services/driver/warm.py) in the default mode, Ray actors + vLLM: a cell on
rebound actors gives the results of the same cell started cold, exactly (vLLM samples with a seed per request, the
learner is a fresh process, the engines get the cell's initial weights); a crashed cell's actors are not handed on. The warm
cell is RLOO with Elastic Reset and a WCO ensemble, which this test also checks through the default runtime."""
import json
import shutil

import pytest
import yaml

from services.experiments.sweep import load_sweep, run_sweep
from services.experiments.sweep.run import run_cell
from services.driver.warm import WarmRoles

pytestmark = pytest.mark.slow

SEEDED_OUT = ("time_s/", "perf/")  # wall-clock figures (and "time"): everything else a run logs is fixed by its seeds


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "time" and not k.startswith(SEEDED_OUT)} for r in rows]


def _samples(run_dir):
    return {p.name: [json.loads(x) for x in p.read_text().splitlines()] for p in sorted((run_dir / "samples").glob("*.jsonl"))}


def test_warm_cells_equal_cold_ones_and_a_crash_is_not_handed_on(tiny_assets, ray_cluster, tmp_path, monkeypatch):
    base = tiny_assets[0].dump()
    base["train"] = {**base.get("train", {}), "iterations": 2, "eval_every": 1}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    # two sweeps on one pool, as the stages of `tether reproduce`: PPO (cold: the first cell) then RLOO with 4 samples per
    # prompt, Elastic Reset and a WCO ensemble (warm: another estimator, sampling and ensemble aggregation); then a PPO cell
    # that crashes mid-run (warm); then, on the same pool, the RLOO cell once more in a folder of its own: the next cell after
    # the crash, on a new set (cold), and the cold reference
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump({"name": "warm1", "base": "base.yaml", "seeds": [0], "methods": {
        "ppo": {"config": {"kl": {"mode": "fixed", "coef": 0.01}}},
        "rloo": {"config": {"ppo": {"advantage": "rloo", "lr": 3e-3}, "generation": {"n_per_prompt": 4}, "ensemble": {"aggregation": "wco"},
                            "elastic_reset": {"enabled": True, "every": 2}, "kl": {"mode": "fixed", "coef": 0.05}}},
    }}, sort_keys=False))
    second.write_text(yaml.safe_dump({"name": "warm2", "base": "base.yaml", "seeds": [1], "methods": {"crash": {}}}, sort_keys=False))
    cells = {c.method: c for spec in (first, second) for c in load_sweep(spec, tmp_path / spec.stem).cells}

    from services.driver.train import Trainer

    step = Trainer.one_iteration

    def crashing(self):
        if "crash" in self.cfg.name and self.iteration == 1:
            raise RuntimeError("injected crash in the driver")
        return step(self)

    monkeypatch.setattr(Trainer, "one_iteration", crashing)
    pool = WarmRoles()
    held, runs, learners = [], [], []  # per cell: the role set the pool lent, its run id and learner actors then
    acquire = pool.acquire

    def lend(cfg, paths):
        held.append(acquire(cfg, paths))
        runs.append(held[-1].run_id)
        learners.append([a._actor_id.hex() for a in held[-1].learners])
        return held[-1]

    monkeypatch.setattr(pool, "acquire", lend)
    cold = tmp_path / "cold" / "rloo"
    try:
        statuses = {**run_sweep(first, tmp_path / "first", progress=False, pool=pool).statuses,
                    **run_sweep(second, tmp_path / "second", progress=False, pool=pool).statuses}
        cold.mkdir(parents=True)
        shutil.copy(cells["rloo"].dir / "cell.yaml", cold / "cell.yaml")
        assert run_cell(cold, progress=False, pool=pool) == "ran"
    finally:
        pool.close()
    assert statuses == {cells["ppo"].id: "ran", cells["rloo"].id: "ran", cells["crash"].id: "failed"}
    assert pool.counts == {"cold": 2, "warm": 2}
    assert held[0] is held[1] is held[2] and held[3] is not held[2]  # the crashed cell's actors were closed, not lent on
    assert len(set(runs)) == 4 and len({x for ls in learners for x in ls}) == 4  # a fresh learner group per cell
    warm_rows, cold_rows = _rows(cells["rloo"].dir), _rows(cold)
    assert [r["step"] for r in warm_rows] == [1, 2, 2]  # 2 iterations (each with an evaluation before it), then the final evaluation
    diff = {(i, k): (w.get(k), c.get(k)) for i, (w, c) in enumerate(zip(warm_rows, cold_rows)) for k in {*w, *c} if w.get(k) != c.get(k)}
    assert not diff and len(warm_rows) == len(cold_rows)  # every seeded figure equal
    assert any(r.get("eval/gold_mean") is not None for r in warm_rows) and any("loss/policy" in r for r in warm_rows)
    # RLOO through Ray + vLLM: no value network; Elastic Reset after iteration 2; WCO: the minimum of the members
    steps = [r for r in warm_rows if "loss/policy" in r]
    assert len(steps) == 2 and all("loss/value" not in r and "loss/kl" not in r for r in steps)
    assert [r["elastic_reset/event"] for r in steps] == [0.0, 1.0]
    assert all(r["reward/proxy_member_1"] >= r["reward/train_aggregate"] - 1e-6 for r in steps)
    assert _samples(cells["rloo"].dir) == _samples(cold)
    assert json.loads((cold / "status.json").read_text())["state"] == "finished"  # the cell after the crash, on its new actors
