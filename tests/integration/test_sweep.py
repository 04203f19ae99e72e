"""`tether sweep`: spec parsing and validation, the cell entrypoint, the sweep report's numbers and fits,
the RL-law fits drawn in the run / comparison reports, and real sweeps on the tiny task: in this process
(run, skip, resume) and as jobs on a real local Ray head."""
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from learner.config import load_config  # noqa: E402
from learner.analysis.scaling_laws import FitResult  # noqa: E402
from learner.analysis.rl_fits import RLFit, fit_rl_runs  # noqa: E402
from services.driver.report import draw_rl_fit, write_comparison_report, write_run_report  # noqa: E402
from services.state.runlog import RunLog  # noqa: E402
from services.experiments.sweep import (SweepSpecError, cell_entrypoint, load_sweep, run_sweep, summarise, write_sweep_files,  # noqa: E402
                            write_sweep_report)


def _spec(tmp_path, **spec) -> str:
    p = tmp_path / "spec.yaml"
    p.write_text(yaml.safe_dump({"name": "t", "base": "tiny", **spec}, sort_keys=False))
    return str(p)


# -- the spec -----------------------------------------------------------------------------------------
def test_cells_are_methods_times_grid_times_seeds(tmp_path):
    spec = _spec(tmp_path, set={"train.iterations": 7}, seeds=[0, 3], methods={
        "ppo_kl": {"config": {"kl": {"mode": "fixed"}}, "grid": {"kl.coef": [0.01, 0.05], "ppo.lr": [1.0e-4]}},
        "elastic_reset": {"config": {"elastic_reset": {"enabled": True, "every": 5}}},
        "fdpg_js": {"config": {"algorithm": "fdpg", "fdpg": {"divergence": "js"}}},  # the base's ppo section is not inherited
    })
    sw = load_sweep(spec, tmp_path / "sw")
    ids = [c.id for c in sw.cells]
    assert ids == ["ppo_kl/kl.coef=0.01,ppo.lr=0.0001/seed-0", "ppo_kl/kl.coef=0.01,ppo.lr=0.0001/seed-3",
                   "ppo_kl/kl.coef=0.05,ppo.lr=0.0001/seed-0", "ppo_kl/kl.coef=0.05,ppo.lr=0.0001/seed-3",
                   "elastic_reset/default/seed-0", "elastic_reset/default/seed-3", "fdpg_js/default/seed-0", "fdpg_js/default/seed-3"]
    c = sw.cells[3]
    assert c.dir == tmp_path / "sw" / "ppo_kl" / "kl.coef=0.05,ppo.lr=0.0001" / "seed-3"
    assert (c.config.kl.coef, c.config.kl.mode, c.config.ppo.lr, c.config.train.seed, c.config.train.iterations) == (0.05, "fixed", 1e-4, 3, 7)
    assert c.config.ppo.batch_size == 8  # from the tiny base
    assert sw.cells[4].config.elastic_reset.every == 5 and sw.cells[4].config.kl.coef == 0.001
    assert sw.cells[6].config.algorithm == "fdpg" and "ppo" not in sw.cells[6].config.model_fields_set
    assert len({c.config.name for c in sw.cells}) == len(sw.cells)
    assert all(os.path.isabs(c.config.data_dir) for c in sw.cells)
    # cells.json and each cell.yaml, which re-loads to the same config
    write_sweep_files(sw)
    meta = json.loads((tmp_path / "sw" / "cells.json").read_text())
    assert [x["id"] for x in meta["cells"]] == ids and meta["spec"]["seeds"] == [0, 3]
    assert meta["cells"][3]["config"]["kl"]["coef"] == 0.05 and meta["cells"][3]["dir"] == "ppo_kl/kl.coef=0.05,ppo.lr=0.0001/seed-3"
    from learner.config import load_config

    for c in sw.cells:
        assert load_config(c.dir / "cell.yaml") == c.config


def test_default_folder_is_under_runs_dir_and_names_are_filesystem_safe(tmp_path):
    spec = _spec(tmp_path, set={"runs_dir": str(tmp_path / "r")}, methods={"m": {"grid": {"task.name": ["imdb"], "generation.top_k": [0]}}})
    (cell,) = load_sweep(spec).cells
    assert cell.dir == tmp_path / "r" / "sweep-t" / "m" / "task.name=imdb,generation.top_k=0" / "seed-0"  # seed: the base's own train.seed


@pytest.mark.parametrize("spec, needles", [
    ({"methods": {"a": {}}, "sweeps": 3}, ["unknown key(s) 'sweeps'", "accepted keys: name, base, set, seeds, methods"]),
    ({"methods": {}}, ["'methods' is empty"]),
    ({}, ["'methods' is empty"]),
    ({"methods": {"a": {"grid": {"kl.coef": 0.05}}}}, ["method 'a'", "grid values of 'kl.coef' must be a non-empty list", "[0.05]"]),
    ({"methods": {"a": {"grid": {"kl.coeff": [0.1]}}}}, ["method 'a'", "'kl.coeff' is not a config field", "accepted there:", "coef"]),
    ({"methods": {"a": {"grid": {"train.iterations.x": [1]}}}}, ["'train.iterations' is a value, not a section"]),
    ({"methods": {"a": {"grid": {"train.seed": [1, 2]}}}}, ["'train.seed' cannot be set here", "seeds:"]),
    ({"methods": {"a": {"confg": {}}}}, ["unknown key(s) 'confg'", "accepted keys: config, grid"]),
    ({"methods": {"a": {"grid": {"kl.coef": [0.1, 0.1]}}}}, ["list a value twice"]),
    ({"methods": {"a": {}}, "seeds": []}, ["'seeds' must be a non-empty list of integers"]),
    ({"methods": {"a": {}}, "set": {"ppo.lrr": 1}}, ["'set'", "'ppo.lrr' is not a config field"]),
    ({"methods": {"a b": {}}}, ["method 'a b'", "method names"]),
    ({"methods": {"a": {}}, "base": "nope"}, ["base 'nope' is neither a YAML file", "presets:", "tiny"]),
])
def test_spec_errors_name_the_key_and_what_is_accepted(tmp_path, spec, needles):
    with pytest.raises(SweepSpecError) as e:
        load_sweep(_spec(tmp_path, **spec))
    for n in needles:
        assert n in str(e.value), (n, str(e.value))


def test_invalid_cells_are_all_reported_before_anything_runs(tmp_path):
    spec = _spec(tmp_path, seeds=[0], methods={
        "ppo_kl": {"grid": {"kl.coef": [0.01, -1.0]}},
        "quark_bad": {"config": {"algorithm": "quark", "quark": {"k": 1}}},
        "fine": {},
    })
    with pytest.raises(SweepSpecError) as e:
        run_sweep(spec, tmp_path / "sw", progress=False)
    msg = str(e.value)
    assert "2 cell(s) have an invalid config; nothing was run" in msg
    assert "cell 'ppo_kl/kl.coef=-1.0/seed-0'" in msg and "kl.coef: Input should be greater than or equal to 0" in msg
    assert "cell 'quark_bad/default/seed-0'" in msg and "quark.k" in msg
    assert not (tmp_path / "sw").exists()


def test_a_cell_folder_with_another_config_is_refused(tmp_path):
    spec = _spec(tmp_path, methods={"a": {"grid": {"kl.coef": [0.01]}}})
    sw = load_sweep(spec, tmp_path / "sw")
    write_sweep_files(sw)
    stored = sw.cells[0].config.model_dump(mode="json")
    stored["train"]["iterations"] = 99
    (sw.cells[0].dir / "config.json").write_text(json.dumps(stored))
    with pytest.raises(SweepSpecError, match=r"a/kl.coef=0.01/seed-0: train.iterations: 99 -> 3"):
        write_sweep_files(sw)


def test_cell_entrypoint_is_this_interpreter_running_run_cell(tmp_path):
    d = tmp_path / "sw" / "ppo_kl" / "kl.coef=0.05,x=a b" / "seed-0"
    cmd = cell_entrypoint(d)
    assert shlex.split(cmd) == [sys.executable, "-m", "services.experiments.sweep", "run-cell", str(d.resolve())]
    assert shlex.split(cell_entrypoint("rel", python="/opt/py 3/python")) == ["/opt/py 3/python", "-m", "services.experiments.sweep", "run-cell",
                                                                              str(Path("rel").resolve())]
    out = subprocess.run(shlex.split(cell_entrypoint(tmp_path)), capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode != 0 and "not a sweep cell folder (no cell.yaml)" in out.stderr


# -- fits in the reports ------------------------------------------------------------------------------
ALPHA, BETA = 0.6, 0.3  # R(d) = d (0.6 - 0.3 log d): peak d* = exp(0.6 / 0.3 - 1) = e, KL* = e^2


def _law_run(d, *, r0, kls, seed_noise=0.0, finished=True):
    """A run folder whose eval rows lie on the RL law: iteration 0 at KL 0, gold r0; then gold = r0 + R(sqrt(KL))."""
    log = RunLog(d, tensorboard=False)
    for step, kl in enumerate([0.0, *kls], start=1):
        dd = math.sqrt(kl)
        gold = r0 + (dd * (ALPHA - BETA * math.log(dd)) if dd > 0 else 0.0) + seed_noise
        log.log(step, {"eval/gold_mean": gold, "eval/proxy_mean": gold + 0.1 * kl, "eval/kl_from_init_k3": kl, "eval/proxy_gold_gap": 0.1 * kl,
                       "reward/proxy_mean": 0.0, "reward/gold_mean": 0.0, "kl/from_init": kl})
    log.close()
    if finished:
        (d / "summary.json").write_text(json.dumps({"eval/gold_mean": gold, "eval/proxy_mean": gold + 0.1 * kl, "eval/kl_from_init_k3": kl,
                                                    "eval/proxy_gold_gap": 0.1 * kl}))
        (d / "status.json").write_text(json.dumps({"state": "finished"}))
    (d / "config.json").write_text("{}")


def test_fit_pools_runs_each_recentred_to_its_own_iteration_0():
    kls = [0.5, 2.0, 4.0, 9.0]
    runs = []
    for r0 in (-1.0, 0.5):  # different eval prompts per seed: different pi_0 gold, same law above it
        d = np.sqrt(kls)
        runs.append((np.array([0.0, *kls]), np.array([r0, *(r0 + d * (ALPHA - BETA * np.log(d)))])))
    rf = fit_rl_runs(runs)
    assert rf.fit is not None and rf.n_points == 8 and rf.r0 == pytest.approx(-0.25)
    assert (rf.fit.alpha, rf.fit.beta, rf.fit.r2) == pytest.approx((ALPHA, BETA, 1.0))
    assert rf.fit.peak_d == pytest.approx(math.e) and rf.as_dict()["peak_kl"] == pytest.approx(math.e**2)
    few = fit_rl_runs([(np.array([0.0, 1.0, 2.0]), np.array([0.0, 0.1, 0.2]))])
    assert few.fit is None and "too few points: 2" in few.reason and few.as_dict()["error"] == few.reason
    singular = fit_rl_runs([(np.array([0.0, 1.0, 1.0, 1.0]), np.array([0.0, 0.1, 0.2, 0.3]))])  # every d = 1: d log d = 0
    assert singular.fit is None and singular.reason.startswith("fit failed:") and "underdetermined" in singular.reason


def test_draw_rl_fit_draws_r0_plus_the_law_and_skips_without_a_fit():
    fig, ax = plt.subplots()
    fit = FitResult(ALPHA, BETA, 1.0, math.e, BETA * math.e, 5, "rl")
    draw_rl_fit(ax, RLFit(fit, r0=2.0, kl_max=9.0, n_points=5), "C0", "law")
    curve, star = ax.lines
    assert curve.get_linestyle() == "--" and curve.get_xdata()[-1] == pytest.approx(9.0 * 1.21)
    d = np.sqrt(curve.get_xdata()[1:])
    assert np.allclose(curve.get_ydata()[1:], 2.0 + d * (ALPHA - BETA * np.log(d)))
    assert star.get_xdata()[0] == pytest.approx(math.e**2) and star.get_ydata()[0] == pytest.approx(2.0 + BETA * math.e)
    draw_rl_fit(ax, RLFit(None, r0=0.0, kl_max=1.0, n_points=1, reason="too few"), "C1", "none")
    assert len(ax.lines) == 2
    plt.close(fig)


def test_run_and_comparison_reports_list_the_fit_or_say_why_not(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _law_run(a, r0=0.3, kls=[0.5, 2.0, 4.0, 9.0])
    _law_run(b, r0=0.0, kls=[1.0, 2.0])
    page = write_run_report(a, "a").read_text()
    assert "Fitted RL scaling law" in page and "<td>0.6000</td><td>0.3000</td><td>1.000</td>" in page
    assert f"<td>{math.e:.3f}</td><td>{math.e**2:.3f}</td><td>{0.3 + BETA * math.e:+.3f}</td><td>4</td>" in page
    page_b = write_run_report(b, "b").read_text()
    assert "no fit (too few points: 2 evaluation(s) with KL &gt; 0 after iteration 0, need &gt;= 3); curve not drawn" in page_b
    cmp = write_comparison_report({"a": a, "b": b}, tmp_path, "cmp").read_text()
    assert "<td>a</td><td>0.6000</td>" in cmp and "<td>b</td><td colspan=6>no fit" in cmp
    assert (tmp_path / "frontier_gold_vs_kl.png").stat().st_size > 5000


def test_sweep_report_numbers_and_per_method_fits(tmp_path):
    spec = _spec(tmp_path, seeds=[0, 1], methods={"ppo_kl": {"grid": {"kl.coef": [0.01, 0.05]}}, "er": {}})
    sw = load_sweep(spec, tmp_path / "sw")
    write_sweep_files(sw)
    cells = {c.id: c for c in sw.cells}
    # ppo_kl: four runs on the same law (pooled: exact fit); er: one finished run + one that never started
    _law_run(cells["ppo_kl/kl.coef=0.01/seed-0"].dir, r0=0.0, kls=[1.0, 4.0, 9.0])
    _law_run(cells["ppo_kl/kl.coef=0.01/seed-1"].dir, r0=0.2, kls=[2.0, 5.0])
    _law_run(cells["ppo_kl/kl.coef=0.05/seed-0"].dir, r0=-0.1, kls=[0.5, 1.5])
    _law_run(cells["ppo_kl/kl.coef=0.05/seed-1"].dir, r0=0.1, kls=[0.25], finished=False)  # still running: in the fit, not the table
    _law_run(cells["er/default/seed-0"].dir, r0=0.0, kls=[0.3])
    page = write_sweep_report(tmp_path / "sw")
    s = json.loads((tmp_path / "sw" / "sweep_summary.json").read_text())
    assert s == summarise(tmp_path / "sw")
    assert page.exists() and (tmp_path / "sw" / "frontier_gold_vs_kl.png").stat().st_size > 5000 and (tmp_path / "sw" / "gap_vs_kl.png").exists()
    law = lambda kl: math.sqrt(kl) * (ALPHA - BETA * math.log(math.sqrt(kl)))  # noqa: E731
    g = {(x["method"], x["setting"]): x for x in s["groups"]}
    g1 = g[("ppo_kl", "kl.coef=0.01")]
    golds = [law(9.0), 0.2 + law(5.0)]
    assert g1["gold"]["n"] == 2 and g1["gold"]["mean"] == pytest.approx(np.mean(golds)) and g1["gold"]["std"] == pytest.approx(np.std(golds, ddof=1))
    assert g1["kl"]["mean"] == pytest.approx(7.0) and g1["gap"]["mean"] == pytest.approx(0.7)
    g2 = g[("ppo_kl", "kl.coef=0.05")]
    assert g2["gold"]["n"] == 1 and g2["gold"]["std"] is None and g2["kl"]["mean"] == pytest.approx(1.5)
    assert g[("er", "default")]["gold"]["n"] == 1 and s["cells"]["er/default/seed-1"]["state"] is None
    assert s["cells"]["ppo_kl/kl.coef=0.05/seed-1"]["state"] is None and s["cells"]["ppo_kl/kl.coef=0.05/seed-1"]["final"] is None
    f = s["fits"]["ppo_kl"]
    assert (f["alpha"], f["beta"], f["r2"], f["peak_kl"]) == pytest.approx((ALPHA, BETA, 1.0, math.e**2)) and f["n_points"] == 8
    assert "too few points: 1" in s["fits"]["er"]["error"]
    html = page.read_text()
    assert "ppo_kl/kl.coef=0.01/seed-0/report.html" in html and "<td>ppo_kl</td><td>0.6000</td><td>0.3000</td>" in html
    assert f"{np.mean(golds):+.3f} &plusmn; {np.std(golds, ddof=1):.3f}" in html
    # the whole trajectory of each cell: its gold peak and fall, its best evaluation; and gold/proxy against iterations
    from learner.analysis.overopt import peak_and_fall

    c0 = s["cells"]["ppo_kl/kl.coef=0.01/seed-0"]
    kls = [0.0, 1.0, 4.0, 9.0]
    gold0 = [0.0] + [law(k) for k in kls[1:]]
    want = peak_and_fall([1, 2, 3, 4], gold0, [g + 0.1 * k for g, k in zip(gold0, kls)], kls)
    assert c0["overopt"] == pytest.approx({**want.as_dict(), "overoptimised": want.overoptimised()})
    assert c0["best_eval"] == {"step": 4, "gold": pytest.approx(max(gold0)), "kl": 9.0} and c0["before_reset"] == []
    assert s["cells"]["er/default/seed-0"]["overopt"] is None  # 2 evaluations: too few for a peak
    assert "over-optimisation per cell" in html and (tmp_path / "sw" / "reward_vs_step.png").stat().st_size > 5000


def _write_tiny_base(cfg, tmp_path) -> None:
    """base.yaml: the session's tiny config, in-process roles, 2 iterations."""
    base = cfg.dump()
    base["runtime"] = {**base.get("runtime", {}), "mode": "local", "engine": "transformers"}
    base["train"] = {**base.get("train", {}), "iterations": 2}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))


@pytest.mark.slow
def test_a_sweep_over_generation_checks_the_assets_of_every_cell(tiny_assets, tmp_path):
    """The proxy stage's key includes `generation` (its preference pairs are sampled): before, the sweep checked one cell per
    distinct set of the other sections only, so a cell whose proxy was never built passed the check and failed later."""
    from services.experiments.sweep.run import _check_assets
    from tasks.store import AssetError

    _write_tiny_base(tiny_assets[0], tmp_path)
    spec = tmp_path / "spec.yaml"
    built = tiny_assets[0].generation.max_new_tokens
    spec.write_text(yaml.safe_dump({"name": "gen", "base": "base.yaml", "seeds": [0], "methods": {
        "ppo_kl": {"grid": {"generation.max_new_tokens": [built, built + 1]}}}}, sort_keys=False))
    sw = load_sweep(spec, tmp_path / "sw")
    _check_assets(sw.cells[:1])  # the built one
    with pytest.raises(AssetError, match="tether prepare"):
        _check_assets(sw.cells)


# -- a real sweep on the tiny task -------------------------------------------------------------------
@pytest.mark.slow
def test_sweep_runs_skips_and_resumes_on_the_tiny_task(tiny_assets, tmp_path, capsys):
    _write_tiny_base(tiny_assets[0], tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "tiny-sweep", "base": "base.yaml", "seeds": [0], "methods": {
        "ppo_kl": {"config": {"kl": {"mode": "fixed"}}, "grid": {"kl.coef": [0.01, 0.05]}},
        "elastic_reset": {"config": {"kl": {"mode": "fixed", "coef": 0.01}, "elastic_reset": {"enabled": True, "every": 1}}},
    }}, sort_keys=False))
    sw_dir = tmp_path / "sw"
    sw = load_sweep(spec, sw_dir)
    write_sweep_files(sw)
    er = next(c for c in sw.cells if c.method == "elastic_reset")
    # The Ray-job entrypoint, run here as a plain process from another working directory.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(shlex.split(cell_entrypoint(er.dir)) + ["--no-progress"], capture_output=True, text=True, cwd="/", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((er.dir / "status.json").read_text())["state"] == "finished" and f"cell {er.dir.resolve()}: ran" in out.stdout

    res = run_sweep(spec, sw_dir, progress=False)
    assert res.statuses == {"ppo_kl/kl.coef=0.01/seed-0": "ran", "ppo_kl/kl.coef=0.05/seed-0": "ran", "elastic_reset/default/seed-0": "skipped"}
    assert res.report == sw_dir / "report.html" and res.report.exists() and (sw_dir / "frontier_gold_vs_kl.png").exists()
    s = json.loads((sw_dir / "sweep_summary.json").read_text())
    assert set(s["cells"]) == set(res.statuses) and all(c["state"] == "finished" for c in s["cells"].values())
    assert [(g["method"], g["setting"], g["gold"]["n"]) for g in s["groups"]] == [
        ("ppo_kl", "kl.coef=0.01", 1), ("ppo_kl", "kl.coef=0.05", 1), ("elastic_reset", "default", 1)]
    for c in sw.cells:
        summ = json.loads((c.dir / "summary.json").read_text())
        assert s["cells"][c.id]["final"]["gold"] == summ["eval/gold_mean"] and (c.dir / "report.html").exists()
        assert json.loads((c.dir / "config.json").read_text())["kl"]["coef"] == c.config.kl.coef
    # two evaluations with KL > 0 per cell: ppo_kl pools 4 points and is fitted; elastic_reset alone has 2
    assert s["fits"]["ppo_kl"]["n_points"] == 4 and math.isfinite(s["fits"]["ppo_kl"]["alpha"])
    assert "too few points" in s["fits"]["elastic_reset"]["error"]

    mtimes = {c.id: (c.dir / "metrics.jsonl").stat().st_mtime_ns for c in sw.cells}
    again = run_sweep(spec, sw_dir, progress=False)
    assert set(again.statuses.values()) == {"skipped"}
    assert mtimes == {c.id: (c.dir / "metrics.jsonl").stat().st_mtime_ns for c in sw.cells}

    # An interrupted cell (a checkpoint, not finished) resumes rather than starting over.
    cut = sw.cells[0]
    (cut.dir / "status.json").write_text(json.dumps({"state": "running", "iteration": 2}))
    third = run_sweep(spec, sw_dir, progress=False)
    assert third.statuses[cut.id] == "resumed" and sum(v == "skipped" for v in third.statuses.values()) == 2
    assert json.loads((cut.dir / "status.json").read_text())["state"] == "finished"

    from services.cli import main

    assert main(["sweep", str(spec), "--dir", str(sw_dir), "--report-only"]) == 0
    printed = capsys.readouterr().out
    assert f"sweep folder: {sw_dir}" in printed and "kl.coef=0.05" in printed and f"report: {sw_dir / 'report.html'}" in printed


@pytest.mark.slow
def test_submitted_sweep_runs_each_cell_as_a_ray_job_in_the_default_mode(ray_head, tiny_assets, tether_redis, tmp_path, monkeypatch):
    """--submit against a real local Ray head with the dashboard (tests/service/test_api_ray.py's fixture): one job per unfinished
    cell, each in the default runtime (Ray actors + vLLM). Each cell declares 2 CPUs and the head has 2, so the cells run
    one at a time (before, every cell was submitted at once and the second could not place its actors)."""
    base = tiny_assets[0].dump()
    base["train"] = {**base.get("train", {}), "iterations": 2}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    assert load_config(tmp_path / "base.yaml").runtime.mode == "ray"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "ray-sweep", "base": "base.yaml", "seeds": [0],
                                    "methods": {"ppo_kl": {"grid": {"kl.coef": [0.01, 0.05]}}}}))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_head["tmp"] / "token"))
    said: list[str] = []
    from services.state.redis_store import RunStore

    store = RunStore(tether_redis.url)
    res = run_sweep(spec, tmp_path / "sw", submit=ray_head["url"], ray_auth="token", progress=False, poll_s=1.0, notify=said.append,
                    redis_url=tether_redis.url)
    assert res.statuses == {"ppo_kl/kl.coef=0.01/seed-0": "ran", "ppo_kl/kl.coef=0.05/seed-0": "ran"}
    assert any("at most 1 cell job(s) at once" in line for line in said), said
    infos = []
    for cid in res.statuses:
        d = tmp_path / "sw" / cid
        job = json.loads((d / "job.json").read_text())
        assert job["address"] == ray_head["url"] and ray_head["jobs"].status(job["job_id"]) == "SUCCEEDED"
        assert json.loads((d / "status.json").read_text())["state"] == "finished"
        assert "RolloutActor" in ray_head["jobs"].logs(job["job_id"])  # the roles ran as Ray actors
        rec = store.get_run(job["run_id"])  # each cell is also a run of the service on that Redis, with its metrics
        assert rec["name"] == cid and rec["state"] == "finished" and rec["resources"] == {"CPU": 2.0, "GPU": 0.0}
        assert [m["step"] for m in store.metrics(job["run_id"])] == [1, 2, 2]
        infos.append(ray_head["jobs"].client().get_job_info(job["job_id"]))
    infos.sort(key=lambda i: i.start_time)
    assert infos[1].start_time >= infos[0].end_time
    assert set(run_sweep(spec, tmp_path / "sw", submit=ray_head["url"], progress=False).statuses.values()) == {"skipped"}
