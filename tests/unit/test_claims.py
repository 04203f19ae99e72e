"""learner.analysis.claims (effects, the two-level bootstrap, verdicts) and services.experiments.reproduce's reading of run folders."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from learner.analysis import claims as C


def _run(name, gold_curve, kl, *, n_prompts=32, per_prompt=1, noise=0.5, seed=0, proxy_curve=None):
    """A run whose per-sample gold at evaluation m is gold_curve[m] + a prompt effect + noise."""
    rng = np.random.default_rng(seed)
    M, L = len(gold_curve), n_prompts * per_prompt
    prompt_effect = rng.normal(0, noise, n_prompts).repeat(per_prompt)  # (L,)
    gold = np.asarray(gold_curve)[:, None] + prompt_effect[None, :] + rng.normal(0, noise, (M, L))
    proxy = (np.asarray(proxy_curve if proxy_curve is not None else gold_curve))[:, None] + rng.normal(0, noise, (M, L))
    return C.RunCurve(name, seed, np.arange(M) * 2, np.asarray(kl, float), gold, proxy, np.arange(n_prompts).repeat(per_prompt))


def test_frontier_is_the_best_value_reached_within_each_kl_budget():
    kl = np.array([0.0, 2.0, 1.0, 5.0])
    y = np.array([0.0, 3.0, 1.0, 2.0])
    f = C.frontier(kl, y, np.array([0.0, 0.5, 1.0, 1.5, 2.0, 4.0, 5.0, 9.0]))
    assert f.tolist() == [0.0, 0.0, 1.0, 1.0, 3.0, 3.0, 3.0, 3.0]
    # an Elastic Reset-like trajectory: KL drops at a reset, the frontier keeps the best point at each budget
    assert C.frontier([0, 4, 1, 6], [0, 2, 2.5, 1], [3.0, 4.0])[0] == 2.5


def test_frontier_gap_of_a_uniformly_better_arm_is_its_margin():
    kl = np.linspace(0, 10, 6)
    a = [_run("a", 1.0 + 0.1 * kl, kl, noise=0.0, seed=s).view() for s in range(3)]
    b = [_run("b", 0.1 * kl, kl * 1.5, noise=0.0, seed=s).view() for s in range(3)]  # b reaches further: the grid stops at a's 10
    assert C.kl_grid(a + b, 11)[-1] == pytest.approx(10.0)
    gap = C.frontier_gap(a, b)
    # b at KL k (its points at 1.5x) has the value of its point at or below k: never above a's
    assert gap > 1.0 - 1e-9


def test_loss_after_peak_final_and_distinct_n_by_hand():
    g = np.array([0.0, 1.0, 2.0, 3.0, 2.0, 0.0, -1.0, -2.0])
    # smoothed peak: (2 + 3 + 2) / 3 = 7/3; last 3: (0 - 1 - 2) / 3 = -1
    assert C.loss_after_peak(g) == pytest.approx(7 / 3 + 1)
    assert C.final([1.0, 2.0, 3.0, 4.0]) == pytest.approx(3.0)
    assert C.distinct_n(["a b a b", "a b c"], 2) == pytest.approx(3 / 5)  # (a b), (b a), (b c) of 5 bigrams
    assert C.distinct_n([], 2) == 0.0
    with pytest.raises(ValueError):
        C.distinct_n(["x"], 0)


def test_loss_after_peak_of_a_rising_curve_is_small():
    assert C.loss_after_peak(np.arange(6.0)) == pytest.approx(0.5)


def test_verdicts_follow_the_interval():
    e = lambda lo, hi: C.Estimate((lo + hi) / 2, lo, hi, 100, {})  # noqa: E731
    assert C.verdict(e(0.1, 0.5)) == C.HOLDS
    assert C.verdict(e(-0.5, -0.1)) == C.FAILS
    assert C.verdict(e(-0.1, 0.5)) == C.INCONCLUSIVE
    assert C.verdict(e(0.91, 0.99), threshold=0.9) == C.HOLDS
    assert C.verdict(e(0.5, 0.7), threshold=0.9) == C.FAILS
    assert C.verdict(e(-0.5, -0.1), direction="below") == C.HOLDS
    assert C.verdict(e(math.nan, math.nan)) == C.INCONCLUSIVE
    assert C.equivalence_verdict(e(-0.05, 0.05), margin=0.1) == C.HOLDS
    assert C.equivalence_verdict(e(0.2, 0.3), margin=0.1) == C.FAILS
    assert C.equivalence_verdict(e(0.05, 0.3), margin=0.1) == C.INCONCLUSIVE
    with pytest.raises(ValueError):
        C.verdict(e(0, 1), direction="sideways")
    with pytest.raises(ValueError):
        C.equivalence_verdict(e(0, 1), margin=0)


def test_bootstrap_separates_a_real_effect_from_none():
    kl = np.linspace(0, 10, 11)
    better = [_run("a", 0.8 + 0.1 * kl, kl, seed=s) for s in range(3)]
    worse = [_run("b", 0.1 * kl, kl, seed=10 + s) for s in range(3)]
    same = [_run("c", 0.1 * kl, kl, seed=20 + s) for s in range(3)]
    stat = lambda s: C.frontier_gap(s["a"], s["b"])  # noqa: E731
    est = C.bootstrap(stat, {"a": better, "b": worse}, n_boot=300)
    assert est.lo < est.point < est.hi
    assert C.verdict(est) == C.HOLDS
    null = C.bootstrap(stat, {"a": same, "b": worse}, n_boot=300)
    assert null.lo < 0 < null.hi and C.verdict(null) == C.INCONCLUSIVE
    rev = C.bootstrap(lambda s: C.frontier_gap(s["b"], s["a"]), {"a": better, "b": worse}, n_boot=300)
    assert C.verdict(rev) == C.FAILS


def test_bootstrap_interval_reflects_prompt_noise_and_seed_noise():
    kl = np.linspace(0, 4, 5)
    quiet = [_run("q", np.full(5, 1.0), kl, noise=0.01, seed=s) for s in range(3)]
    loud = [_run("l", np.full(5, 1.0), kl, noise=1.0, seed=s) for s in range(3)]
    mean_gold = lambda s: C.arm_mean(s["x"], lambda v: C.final(v.gold))  # noqa: E731
    q = C.bootstrap(mean_gold, {"x": quiet}, n_boot=300)
    lo = C.bootstrap(mean_gold, {"x": loud}, n_boot=300)
    assert (lo.hi - lo.lo) > 10 * (q.hi - q.lo)
    # with prompt resampling off, identical seeds give a zero-width interval: the prompt level is what widens it
    same = [quiet[0]] * 3
    assert C.bootstrap(mean_gold, {"x": same}, n_boot=100, prompts=False).hi == pytest.approx(
        C.bootstrap(mean_gold, {"x": same}, n_boot=100, prompts=False).lo)
    assert C.bootstrap(mean_gold, {"x": same}, n_boot=200).hi > C.bootstrap(mean_gold, {"x": same}, n_boot=200).lo


def test_bootstrap_resamples_prompts_as_groups():
    # 8 prompts x 4 samples; the samples of a prompt are identical, so a group draw keeps each prompt's 4 together:
    # the mean is always a mean of whole prompts (a multiple of 1/8 of the prompt values' sum structure)
    gold = np.repeat(np.arange(8.0), 4)[None, :]  # (1, 32)
    r = C.RunCurve("g", 0, [0], [0.0], gold, gold, np.repeat(np.arange(8), 4))
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.multinomial(8, np.full(8, 1 / 8))
        v = r.view(counts)
        assert v.gold[0] == pytest.approx((counts * np.arange(8.0)).sum() / 8)


def test_bootstrap_leaves_out_failed_resamples_and_names_empty_arms():
    kl = np.linspace(0, 4, 5)
    runs = [_run("x", np.ones(5), kl, seed=s) for s in range(3)]
    calls = {"n": 0}

    def flaky(s):
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            raise ValueError("fit failed")
        return 1.0

    est = C.bootstrap(flaky, {"x": runs}, n_boot=100)
    assert est.lo == est.hi == 1.0
    always = C.bootstrap(lambda s: (_ for _ in ()).throw(ValueError("no")), {"x": runs}, n_boot=20)
    assert math.isnan(est.point) is False and math.isnan(always.lo) and C.verdict(always) == C.INCONCLUSIVE
    with pytest.raises(ValueError, match="at least one run"):
        C.bootstrap(flaky, {"x": []})


def test_paired_bootstrap_keeps_pairs():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (40, 3))
    b = a + 0.25  # the very same prompts, shifted
    est = C.bootstrap_paired(lambda s: float(s["b"].mean() - s["a"].mean()), {"a": a, "b": b}, n_boot=200)
    assert est.lo == pytest.approx(0.25) and est.hi == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same prompts"):
        C.bootstrap_paired(lambda s: 0.0, {"a": a, "b": b[:5]})


def test_run_curve_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        C.RunCurve("x", 0, [0, 1], [0.0, 1.0], [[0.0, np.nan], [0.0, 0.0]], np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="disagree"):
        C.RunCurve("x", 0, [0, 1], [0.0], np.zeros((2, 2)), np.zeros((2, 2)), [0, 1])


# -- services.experiments.reproduce: run folders -> RunCurves -> claims --------------------------------------------------
def _write_cell(d: Path, gold_curve, kl, *, seed=0, n=8, finished=True, before_reset=()):
    d.mkdir(parents=True, exist_ok=True)
    (d / "samples").mkdir()
    rng = np.random.default_rng(seed)
    rows = []
    for m, (g, k) in enumerate(zip(gold_curve, kl)):
        step = 2 * m
        lines = [{"prompt": f"p{i}", "response": f"w{i} w{m} x y", "proxy": float(g + 1 + rng.normal(0, 0.1)),
                  "proxy_members": [0.0], "gold": float(g + rng.normal(0, 0.1))} for i in range(n)]
        (d / "samples" / f"step-{step:06d}.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        row = {"step": step + 1, "eval/gold_mean": float(np.mean([x["gold"] for x in lines])), "eval/kl_from_init_k3": float(k),
               "eval/ppl_under_init": 20.0}
        if m in before_reset:
            row["eval/before_reset"] = 1.0
        rows.append(row)
        rows.append({"step": step + 2, "reward/proxy_mean": 0.0})  # a training row between evaluations
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.json").write_text("{}")
    (d / "status.json").write_text(json.dumps({"state": "finished" if finished else "running", "iteration": 2 * len(kl)}))


def _write_sweep(root: Path, cells: dict[str, list]):
    meta = {"spec": {"name": root.name}, "cells": []}
    for method, runs in cells.items():
        for seed, (gold, kl) in enumerate(runs):
            rel = f"{method}/default/seed-{seed}"
            _write_cell(root / rel, gold, kl, seed=seed)
            meta["cells"].append({"id": f"{method}/default/seed-{seed}", "method": method, "setting": "default", "seed": seed, "dir": rel})
    root.mkdir(parents=True, exist_ok=True)
    (root / "cells.json").write_text(json.dumps(meta))


def test_read_run_pairs_samples_with_evaluations_and_checks_prompts(tmp_path):
    from services.experiments.reproduce import read_run

    _write_cell(tmp_path / "r", [0.0, 1.0, 2.0, 1.5], [0.0, 1.0, 2.0, 3.0], before_reset=(2,))
    r = read_run(tmp_path / "r", name="r", seed=0)
    assert r.steps.tolist() == [0, 2, 4, 6] and r.kl.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert r.gold.shape == (4, 8) and r.n_prompts == 8 and r.before_reset.tolist() == [False, False, True, False]
    assert r.gold.mean(axis=1) == pytest.approx([0.0, 1.0, 2.0, 1.5], abs=0.15)
    assert r.texts[0].startswith("w0 w3")
    assert read_run(tmp_path / "r", name="r", seed=0, max_step=4).steps.tolist() == [0, 2, 4]
    (tmp_path / "r" / "samples" / "step-000006.jsonl").unlink()
    with pytest.raises(ValueError, match="3 samples files but 4 evaluations"):
        read_run(tmp_path / "r", name="r", seed=0)
    _write_cell(tmp_path / "s", [0.0, 1.0], [0.0, 1.0])
    f = tmp_path / "s" / "samples" / "step-000002.jsonl"
    f.write_text(f.read_text().replace('"p0"', '"other"'))
    with pytest.raises(ValueError, match="differ from the run.s first evaluation"):
        read_run(tmp_path / "s", name="s", seed=0)


def test_write_claims_measures_what_has_run_and_names_the_stage_for_the_rest(tmp_path, monkeypatch):
    import services.experiments.reproduce as R

    runs = tmp_path / "runs"
    kl = [0.0, 2, 4, 6, 8, 10, 12, 14]
    rise_fall = [0.0, 1.0, 2.0, 3.0, 2.0, 0.0, -1.0, -2.0]
    _write_sweep(runs / "sweep-overopt", {"ppo_kl0": [(rise_fall, kl)] * 3, "ppo_kl001": [(rise_fall, kl)] * 3})
    _write_sweep(runs / "sweep-repro-er", {"elastic_reset": [([g + 1.0 for g in rise_fall], kl)] * 3, "ppo_kl005": [(rise_fall, kl)] * 3})
    dirs = {s.name: runs / f"missing-{s.name}" for s in R.STAGES}
    dirs.update({"overopt": runs / "sweep-overopt", "elastic_reset": runs / "sweep-repro-er", "bon": runs / "reproduce-bon"})
    monkeypatch.setattr(R, "stage_dirs", lambda runs_dir: dirs)
    res = R.write_claims(tmp_path / "out", runs_dir=runs, n_boot=200)
    by = {r["claim"]: r for r in res["rows"]}
    fall = by["PPO with no KL penalty over-optimises the proxy"]
    assert fall["verdict"] == C.HOLDS and fall["effect"]["point"] == pytest.approx((7 / 3 + 1) / (7 / 3), rel=0.1)
    er = by["Elastic Reset: higher gold than PPO + KL 0.05 at equal KL from pi_0"]
    assert er["verdict"] == C.HOLDS and er["effect"]["point"] == pytest.approx(1.0, abs=0.1)
    assert by["Quark: less toxic than PPO + KL"]["verdict"] == "not measured"
    assert "tether reproduce --only quark" in by["Quark: less toxic than PPO + KL"]["why"] and "fewer than 3 finished seeds" in by["Quark: less toxic than PPO + KL"]["why"]
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "| Noukhovitch et al. 2023 | Elastic Reset: higher gold than PPO + KL 0.05" in md and "**holds**" in md
    assert (tmp_path / "out" / "claims_frontiers.png").stat().st_size > 1000
    assert json.loads((tmp_path / "out" / "claims.json").read_text())["rows"][0]["verdict"] == C.HOLDS
    assert res["timing"]["overopt"]["cells"] == 6


def test_write_claims_of_one_stage_measures_the_critic_free_comparison_alone(tmp_path, monkeypatch):
    """--report-only --only critic_free: that stage's rows only (its PPO arm read from the overopt sweep), the peak and
    the KL at the peak measured per run; GRPO here peaks higher and later than PPO."""
    import services.experiments.reproduce as R

    runs = tmp_path / "runs"
    kl = [0.0, 2, 4, 6, 8, 10, 12, 14]
    ppo = [0.0, 1.0, 2.0, 3.0, 2.0, 0.0, -1.0, -2.0]  # peak 2.33 (3-point mean) at KL 6
    late = [0.0, 1.0, 2.0, 3.0, 4.0, 8.0, 4.0, 1.0]  # peak 5.33 at KL 10
    _write_sweep(runs / "sweep-overopt", {"ppo_kl001": [(ppo, kl)] * 3})
    _write_sweep(runs / "sweep-repro-critic-free", {m: [(late, kl)] * 3 for m in ("grpo", "dr_grpo", "rloo")})
    dirs = {s.name: runs / f"missing-{s.name}" for s in R.STAGES}
    dirs.update({"overopt": runs / "sweep-overopt", "critic_free": runs / "sweep-repro-critic-free"})
    monkeypatch.setattr(R, "stage_dirs", lambda runs_dir: dirs)
    res = R.write_claims(tmp_path / "out", runs_dir=runs, n_boot=200, only=["critic_free"])
    assert len(res["rows"]) == 9 and {r["paper"] for r in res["rows"]} == {"measured comparison (tether), not a paper's claim"}
    by = {r["claim"]: r for r in res["rows"]}
    peak = by["GRPO's gold peak is higher than PPO's"]
    assert peak["verdict"] == C.HOLDS and peak["effect"]["point"] == pytest.approx(16 / 3 - 7 / 3, abs=0.05)  # the cells hold per-prompt noise
    at = by["RLOO peaks at a larger KL from pi_0 than PPO (over-optimises later in KL)"]
    assert at["effect"]["point"] == pytest.approx(10.0 - 6.0, abs=1e-6) and at["verdict"] == C.HOLDS
    assert by["Dr. GRPO reaches higher gold than PPO (GAE) at equal KL from pi_0 (KL 0.01 in the reward for both)"]["verdict"] == C.HOLDS
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "the stage(s) critic_free only" in md and not (tmp_path / "out" / "guard.json").exists()


def test_cli_reproduce_rejects_unknown_stages_and_plans(capsys):
    from services.cli import main

    with pytest.raises(SystemExit, match="unknown: nope; stages: overopt, elastic_reset"):
        main(["reproduce", "--only", "nope"])
    for bad in ("5", "100000000", "-1"):  # a huge count would run for days before writing anything
        with pytest.raises(SystemExit, match="--n-boot must be between 100 and 100000"):
            main(["reproduce", "--n-boot", bad])
    assert main(["reproduce", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "elastic_reset" in out and "min left" in out


def test_update_readme_rewrites_only_between_the_markers(tmp_path):
    from services.experiments.reproduce import update_readme

    rows = [{"paper": "P", "claim": "c1", "verdict": C.HOLDS, "effect": {"point": 0.5, "lo": 0.1, "hi": 0.9}, "direction": "above", "threshold": 0.0},
            {"paper": "Q", "claim": "c2", "verdict": "not measured", "direction": "above", "threshold": 0.0}]
    f = tmp_path / "README.md"
    f.write_text("top\n<!-- claims:start -->\nold table\n<!-- claims:end -->\nbottom\n")
    assert update_readme(f, rows)
    text = f.read_text()
    assert text.startswith("top\n<!-- claims:start -->\n| paper |") and text.endswith("<!-- claims:end -->\nbottom\n")
    assert "old table" not in text and "| P | c1 | +0.500 [+0.100, +0.900] | > 0 | **holds** |" in text and "Not measured yet (1 claims" in text
    assert update_readme(f, rows) and f.read_text() == text  # idempotent
    g = tmp_path / "other.md"
    g.write_text("no markers")
    assert not update_readme(g, rows) and g.read_text() == "no markers"


def test_loss_after_peak_to_kl_stops_at_the_kl_budget():
    kl = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    g = np.array([0.0, 1.0, 2.0, 3.0, 2.0, 0.0, -1.0, -2.0])
    s = [0.5, 1.0, 2.0, 7 / 3, 5 / 3, 1 / 3, -1.0, -1.5]  # the 3-point moving average
    assert C.loss_after_peak_to_kl(kl, g, 5.0) == pytest.approx(7 / 3 - s[5])  # evaluated at KL 5
    assert C.loss_after_peak_to_kl(kl, g, 4.5) == pytest.approx(7 / 3 - (s[4] + s[5]) / 2)  # interpolated between 4 and 5
    assert C.loss_after_peak_to_kl(kl, g, 100.0) == pytest.approx(7 / 3 - s[-1])  # never past k: its last value
    assert C.loss_after_peak_to_kl(kl, g, 2.0) == pytest.approx(0.0)  # still rising at k
    # KL is not monotone in a run: the cut is where it first exceeds k (a NaN KL counts as past it)
    # (moving average [1.5, 1, 4, 6, 9]: peak 4 before the cut, 4 + 2 * 3/7 at KL 5 on the way to KL 9: still rising)
    assert C.loss_after_peak_to_kl(np.array([0.0, 1, 2, 9, 3]), np.array([0.0, 3, 0, 9, 9]), 5.0) == pytest.approx(-2 * 3 / 7)
    assert C.loss_after_peak_to_kl(np.array([0.0, 1, 2, np.nan, 3]), np.array([0.0, 3, 0, 9, 9]), 5.0) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least 3"):
        C.loss_after_peak_to_kl(kl, g, 1.5)
    with pytest.raises(ValueError, match="finite"):
        C.loss_after_peak_to_kl(kl, g, float("nan"))


def test_the_kl_matched_loss_removes_the_slower_optimisers_advantage():
    """Two arms with one gold-vs-KL curve; one drifts half as fast per iteration. By a fixed iteration the slow arm has
    lost less gold (it is nearer its peak), which is the confound; up to a common KL both have lost the same."""
    from services.experiments.reproduce import _Diff, _LossAtKL

    def run(speed: float, seed: int) -> C.RunView:
        steps = np.arange(0, 31, 2.0)
        kl = speed * steps  # KL from pi_0 grows linearly with the iterations, at this arm's speed
        gold = kl * (3.0 - np.log1p(kl))  # one curve of KL for both arms: peaks near KL 6, then falls
        curve = C.RunCurve(name="x", seed=seed, steps=steps, kl=kl, gold=gold[:, None], proxy=kl[:, None], groups=np.zeros(1, int))
        return C.RunView(curve, gold, kl)

    s = {"fast": [run(2.0, i) for i in range(3)], "slow": [run(1.0, i) for i in range(3)]}
    by_iteration = _Diff("fast", "slow", lambda v: C.loss_after_peak(v.gold))(s)
    assert by_iteration > 40  # the fast arm "loses" 64, the slow one 17: it simply got further by iteration 30
    at_kl = _LossAtKL("fast", "slow")
    parts = at_kl.parts(s)
    assert parts["common KL"] == pytest.approx(30.0) and parts["slow"] > 15
    # up to KL 30 both lost about 18; what remains is the moving average's width (2 iterations span 4 KL or 2 KL)
    assert abs(at_kl(s)) < 0.1 * parts["slow"]


def test_a_damaged_run_folder_is_named_and_left_out_not_fatal(tmp_path, monkeypatch):
    """A finished run whose samples and metrics no longer pair (a torn metrics line, a lost samples file) made
    `tether reproduce --report-only` die with a traceback, losing every other claim. Now that run is left out,
    named in claims.md with the reason, and the claims it belonged to say why they are not measured."""
    import services.experiments.reproduce as R

    runs = tmp_path / "runs"
    kl = [0.0, 2, 4, 6, 8, 10, 12, 14]
    rise_fall = [0.0, 1.0, 2.0, 3.0, 2.0, 0.0, -1.0, -2.0]
    _write_sweep(runs / "sweep-overopt", {"ppo_kl0": [(rise_fall, kl)] * 3, "ppo_kl001": [(rise_fall, kl)] * 3})
    _write_sweep(runs / "sweep-repro-er", {"elastic_reset": [([g + 1.0 for g in rise_fall], kl)] * 3, "ppo_kl005": [(rise_fall, kl)] * 3})
    broken = runs / "sweep-overopt" / "ppo_kl001" / "default" / "seed-1"
    m = broken / "metrics.jsonl"
    lines = m.read_text().splitlines()
    m.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:30])  # the last evaluation's row cut mid-line, as a killed writer leaves it
    dirs = {s.name: runs / f"missing-{s.name}" for s in R.STAGES}
    dirs.update({"overopt": runs / "sweep-overopt", "elastic_reset": runs / "sweep-repro-er", "bon": runs / "reproduce-bon"})
    monkeypatch.setattr(R, "stage_dirs", lambda runs_dir: dirs)
    res = R.write_claims(tmp_path / "out", runs_dir=runs, n_boot=200, plots=False)
    assert list(res["unreadable_runs"]) == [str(broken)] and "8 samples files but 7 evaluations" in res["unreadable_runs"][str(broken)]
    by = {r["claim"]: r for r in res["rows"]}
    assert by["PPO with no KL penalty over-optimises the proxy"]["verdict"] == C.HOLDS  # the other arm's claims still measured
    k001 = by["PPO with KL 0.01 over-optimises the proxy"]
    assert k001["verdict"] == "not measured" and "kl001 (2)" in k001["why"] and "could not be read" in k001["why"]
    md = (tmp_path / "out" / "claims.md").read_text()
    assert "## Runs that could not be read" in md and str(broken) in md


def test_unreadable_runs_are_returned_not_kept_in_a_module_global(tmp_path):
    """load_runs returns the runs it could not read; a RunReader gathers them for one report (and reads each
    method once), so two reports never share them."""
    import services.experiments.reproduce as R

    kl, rise_fall = [0.0, 2, 4, 6], [0.0, 2.0, 3.0, 1.0]
    _write_sweep(tmp_path / "sw", {"a": [(rise_fall, kl)] * 2})
    (tmp_path / "sw" / "a" / "default" / "seed-1" / "samples" / "step-000006.jsonl").unlink()
    got = R.load_runs(tmp_path / "sw", "a")
    assert [r.seed for r in got.runs] == [0] and list(got.unreadable) == [str(tmp_path / "sw" / "a" / "default" / "seed-1")]
    reader = R.RunReader()
    assert reader.runs(tmp_path / "sw", "a") is reader.runs(tmp_path / "sw", "a") and reader.unreadable == got.unreadable
    assert R.RunReader().unreadable == {} and not hasattr(R, "UNREADABLE")


def test_the_rl_form_fits_the_measured_runs_once_for_every_claim_on_them(monkeypatch):
    import learner.analysis.rl_fits as F
    from services.experiments.reproduce import RLForm

    kl = np.linspace(0, 14, 8)
    runs = [_run("kl0", kl * (3.0 - np.log1p(kl)), kl, seed=s) for s in range(3)]
    calls = []
    fit = F.fit_rl_runs
    monkeypatch.setattr(F, "fit_rl_runs", lambda r: calls.append(1) or fit(r))
    form = RLForm("kl0", runs)
    measured = {"kl0": [r.view() for r in runs]}
    r2, ratio, parts = form.r2(measured), form.peak_log_ratio({"kl0": [r.view() for r in runs]}), form.parts(measured)
    assert len(calls) == 1 and parts["R^2"] == r2 == fit([(v.kl, v.gold) for v in measured["kl0"]]).fit.r2 and math.isfinite(ratio)
    resample = {"kl0": [runs[0].view(np.full(32, 2)), runs[0].view(), runs[2].view()]}
    form.r2(resample)
    assert len(calls) == 2  # a bootstrap resample is fitted on its own


def test_plan_measures_seconds_per_iteration_on_finished_cells_and_takes_more_seeds(tmp_path, monkeypatch, capsys):
    """The plan's minutes: per iteration as a stage's finished cells took (config.json -> status.json), else the default
    estimate; one cold start per stage, warm ones after it where the stage shares actors; --seeds N for every sweep stage."""
    import json
    import os

    from services.cli import main
    from services.experiments.reproduce import CELL_START_S, SECONDS_PER_ITERATION, WARM_CELL_START_S, plan

    monkeypatch.chdir(tmp_path)  # the specs' runs_dir is relative: runs/ here
    runs = tmp_path / "runs"
    for seed, took in ((0, 400.0), (1, 480.0)):  # two finished overopt cells of 40 iterations: 10 and 12 s per iteration
        d = runs / "sweep-overopt" / "ppo_kl0" / "default" / f"seed-{seed}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "status.json").write_text(json.dumps({"state": "finished", "iteration": 40}))
        os.utime(d / "config.json", (1000.0, 1000.0))
        os.utime(d / "status.json", (1000.0 + took, 1000.0 + took))
    rows = {r["stage"]: r for r in plan(runs)}
    o = rows["overopt"]
    assert (o["cells"], o["finished"], o["s_per_iteration"]) == (6, 2, 11.0)
    assert o["minutes_left"] == pytest.approx((4 * 40 * 11.0 + CELL_START_S + 3 * WARM_CELL_START_S) / 60)
    e = rows["elastic_reset"]
    assert e["s_per_iteration"] is None and e["minutes_left"] == pytest.approx((6 * 40 * SECONDS_PER_ITERATION + CELL_START_S + 5 * WARM_CELL_START_S) / 60)
    q = rows["quark"]  # each Quark cell writes its own policy folder (reward tokens): every start cold
    assert q["minutes_left"] == pytest.approx((q["iterations"] * SECONDS_PER_ITERATION + q["cells"] * CELL_START_S) / 60)
    five = {r["stage"]: r for r in plan(runs, seeds=list(range(5)))}
    assert (five["overopt"]["cells"], five["overopt"]["finished"], five["critic_free"]["cells"]) == (10, 2, 15)
    assert main(["reproduce", "--plan", "--seeds", "5"]) == 0
    out = capsys.readouterr().out
    assert "11.0" in out and " h; s/iter '-'" in out
    with pytest.raises(SystemExit, match="--seeds must be between 1 and 100"):
        main(["reproduce", "--plan", "--seeds", "0"])
