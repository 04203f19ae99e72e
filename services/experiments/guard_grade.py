"""Grading the gold-free guard (learner/guard.py) against the held-out gold, on the reproduction's runs.

Every finished run of the reproduction's sweeps that has a gold separate from its reward (all but the toxicity
stage) is replayed evaluation by evaluation through the guard's signals, exactly as a run computes them: proxy
members, texts, KL and perplexity under pi_0 from its samples files and metrics; the gold is read only to grade.

Calibration: for each signal, the threshold (from a grid of the signal's observed values) and patience that give
the highest mean gold at the guard's pick over the runs with seeds in ``calib_seeds``. The guard's pick is the
evaluation just before the alarm (the last one the guard still trusted; a run with no alarm keeps its end).
Grading, on the runs with the other seeds only: the true gold peak (3-point moving average) against the alarm
(delay in iterations; an alarm before the peak is early), and the gold at the guard's pick vs at the end vs the
best evaluation in hindsight.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from learner.guard import SIGNALS, Guard, GuardRule, first_alarm
from services.state.runlog import read_json

CALIB_SEEDS = (0, 1)
GRADED_STAGES = ("overopt", "elastic_reset", "ensembles", "salsa", "fdpg")


def replay(run_dir: Path) -> dict:
    """Signals at every evaluation of a run folder, plus its gold per evaluation (for grading only)."""
    from services.state.runlog import evaluations

    g = Guard(GuardRule())
    gold, steps = [], []
    for step, r, lines in evaluations(run_dir):
        g.update(step, np.array([x["proxy_members"] for x in lines]), [x["response"] for x in lines],
                 float(r.get("eval/kl_from_init_k3", math.nan)), r.get("eval/ppl_under_init"))
        gold.append(float(np.mean([x["gold"] for x in lines])))
        steps.append(step)
    if not steps:
        raise ValueError(f"{run_dir}: no evaluations")
    return {"signals": g.history, "gold": gold, "steps": steps}


def collect(dirs: dict[str, Path]) -> list[dict]:
    """Every finished, graded run: {stage, method, seed, dir, signals, gold, steps}."""
    from services.state.runlog import run_state

    out = []
    for stage in GRADED_STAGES:
        d = dirs.get(stage)
        meta = read_json(d / "cells.json") if d else {}
        for c in meta.get("cells", []):
            cd = d / c["dir"]
            if run_state(cd) != "finished":
                continue
            try:
                out.append({"stage": stage, "method": c["method"], "seed": c["seed"], "dir": str(cd), **replay(cd)})
            except (ValueError, OSError, KeyError):
                continue
    return out


def pick(run: dict, rule: GuardRule) -> dict:
    """The guard on one run: alarm index (None), the evaluation it picks, and the gold there, at the end and at best."""
    from learner.analysis.overopt import smooth3

    gold = np.asarray(run["gold"])
    i = first_alarm(run["signals"], rule)
    chosen = len(gold) - 1 if i is None else max(i - 1, 0)
    peak = int(np.argmax(smooth3(gold)))
    return {"alarm": None if i is None else run["steps"][i], "alarm_index": i, "pick_step": run["steps"][chosen],
            "gold_pick": float(gold[chosen]), "gold_final": float(gold[-1]), "gold_best": float(gold.max()),
            "peak_step": run["steps"][peak], "gold_peak": float(smooth3(gold)[peak]),
            "delay": None if i is None else run["steps"][i] - run["steps"][peak]}


def calibrate(runs: list[dict], signal: str, *, patiences=(1, 2), min_kl: float = 1.0) -> GuardRule:
    """The (threshold, patience) for ``signal`` maximising the mean gold at the guard's pick over ``runs``."""
    vals = np.array([r[signal] for run in runs for r in run["signals"] if math.isfinite(r.get(signal, math.nan))])
    if vals.size == 0:
        raise ValueError(f"signal {signal} was never measured on the calibration runs")
    grid = np.unique(np.quantile(vals, np.linspace(0.02, 0.98, 49)))
    best, best_rule = -math.inf, None
    for p in patiences:
        for t in grid:
            rule = GuardRule(signal, float(t), p, min_kl)
            score = float(np.mean([pick(run, rule)["gold_pick"] for run in runs]))
            if score > best + 1e-12:
                best, best_rule = score, rule
    return best_rule


def grade(runs: list[dict], *, calib_seeds=CALIB_SEEDS) -> dict:
    """Per signal: the calibrated rule and its grading on the held-out seeds' runs; the best signal's per-run table."""
    cal = [r for r in runs if r["seed"] in calib_seeds]
    test = [r for r in runs if r["seed"] not in calib_seeds]
    if not cal or not test:
        return {"error": f"need runs with seeds in {list(calib_seeds)} and others; have {len(cal)} and {len(test)}"}
    out = {"calib_seeds": list(calib_seeds), "n_calib": len(cal), "n_test": len(test), "signals": {}}
    for sig in SIGNALS:
        try:
            rule = calibrate(cal, sig)
        except ValueError as e:
            out["signals"][sig] = {"error": str(e)}
            continue
        rows = [{"stage": r["stage"], "method": r["method"], "seed": r["seed"], **pick(r, rule)} for r in test]
        early = [x for x in rows if x["alarm"] is not None and x["alarm"] < x["peak_step"]]
        out["signals"][sig] = {
            "rule": asdict(rule), "describe": rule.describe(),
            "calib_gold_pick": float(np.mean([pick(r, rule)["gold_pick"] for r in cal])),
            "gold_pick": float(np.mean([x["gold_pick"] for x in rows])), "gold_final": float(np.mean([x["gold_final"] for x in rows])),
            "gold_best": float(np.mean([x["gold_best"] for x in rows])),
            "alarms": sum(x["alarm"] is not None for x in rows), "early_alarms": len(early),
            "median_delay": float(np.median([x["delay"] for x in rows if x["delay"] is not None])) if any(x["delay"] is not None for x in rows) else None,
            "runs": rows,
        }
    ok = {k: v for k, v in out["signals"].items() if "error" not in v}
    out["best_signal"] = max(ok, key=lambda k: ok[k]["calib_gold_pick"]) if ok else None  # chosen on calibration, never on the test runs
    return out


def guard_markdown(g: dict) -> str:
    if "error" in g:
        return f"# The guard, graded against gold\n\nNot graded: {g['error']}.\n"
    f = lambda x: "n/a" if x is None else f"{x:+.2f}"  # noqa: E731
    lines = ["# The gold-free guard, graded against gold", "",
             f"Written by `tether reproduce` (services/experiments/guard_grade.py). Signals replayed from every graded run's evaluations "
             f"(learner/guard.py; the gold is read only to grade). Rules calibrated on seeds {g['calib_seeds']} ({g['n_calib']} runs), "
             f"graded on the other seeds ({g['n_test']} runs). The guard's pick is the evaluation just before its alarm.", "",
             "| signal | calibrated rule | gold at the pick (held out) | gold at the end | best in hindsight | alarms | before the peak | median delay (it) |",
             "|---|---|---|---|---|---|---|---|"]
    for sig, v in g["signals"].items():
        if "error" in v:
            lines.append(f"| {sig} | {v['error']} | | | | | | |")
            continue
        mark = " (chosen on calibration)" if sig == g.get("best_signal") else ""
        lines.append(f"| {sig}{mark} | {v['describe']} | {f(v['gold_pick'])} | {f(v['gold_final'])} | {f(v['gold_best'])} | "
                     f"{v['alarms']}/{g['n_test']} | {v['early_alarms']} | {v['median_delay'] if v['median_delay'] is not None else 'n/a'} |")
    best = g.get("best_signal")
    if best:
        lines += ["", f"## Per held-out run, {best}", "", "| run | gold peak (iteration) | alarm | pick | gold at pick | at end | best |", "|---|---|---|---|---|---|---|"]
        for x in g["signals"][best]["runs"]:
            lines.append(f"| {x['stage']}/{x['method']}/seed-{x['seed']} | {f(x['gold_peak'])} ({x['peak_step']}) | "
                         f"{x['alarm'] if x['alarm'] is not None else 'none'} | {x['pick_step']} | {f(x['gold_pick'])} | {f(x['gold_final'])} | {f(x['gold_best'])} |")
    return "\n".join(lines) + "\n"


def guard_plots(g: dict, runs: list[dict], out_dir: Path) -> list[Path]:
    """guard.png: (left) the held-out runs' mean gold at each signal's pick, at the end and at best; (right) every held-out
    run's gold against iterations with the chosen signal's alarm (red line) and pick (dot)."""
    from services.driver.report import COLORS, plt, save_figure

    ok = {k: v for k, v in g.get("signals", {}).items() if "error" not in v}
    best = g.get("best_signal")
    if not ok or best is None:
        return []
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1.1, 1]})
    names = list(ok)
    x = np.arange(len(names))
    for j, (key, label) in enumerate((("gold_pick", "at the guard's pick"), ("gold_final", "at the end"), ("gold_best", "best in hindsight"))):
        a.bar(x + (j - 1) * 0.27, [ok[n][key] for n in names], 0.27, label=label, color=COLORS[j % len(COLORS)])
    a.set_xticks(x, [n + (" *" if n == best else "") for n in names], rotation=35, ha="right", fontsize=8)
    a.axhline(0, color="0.6", lw=0.8)
    a.set_ylabel(f"mean gold, {g['n_test']} held-out runs")
    a.set_title("each signal's calibrated rule (* chosen on calibration)", fontsize=9)
    a.legend(fontsize=8)
    held = [r for r in runs if r["seed"] not in g["calib_seeds"]]
    rows = {(x["stage"], x["method"], x["seed"]): x for x in ok[best]["runs"]}
    for i, r in enumerate(held):
        c = COLORS[i % len(COLORS)]
        b.plot(r["steps"], r["gold"], color=c, lw=1.2, ls="-" if i < len(COLORS) else "--", label=f"{r['stage']}/{r['method']}")
        x_ = rows.get((r["stage"], r["method"], r["seed"]))
        if x_ is not None:
            b.plot([x_["pick_step"]], [x_["gold_pick"]], "o", color=c, ms=5)
            if x_["alarm"] is not None:
                b.axvline(x_["alarm"], color=c, ls=":", lw=0.8)
    b.set_xlabel("iteration")
    b.set_ylabel("held-out gold")
    b.set_title(f"held-out runs: gold, the {best} alarm (dotted) and pick (dot)", fontsize=9)
    b.legend(fontsize=6, ncol=2)
    return [save_figure(fig, Path(out_dir) / "guard.png")]


def write_guard_report(out_dir: Path, dirs: dict[str, Path]) -> dict:
    runs = collect(dirs)
    g = grade(runs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "guard.json").write_text(json.dumps(g, indent=2, default=float))
    (out_dir / "guard.md").write_text(guard_markdown(g) + ("\n![guard](guard.png)\n" if guard_plots(g, runs, out_dir) else ""))
    return g
