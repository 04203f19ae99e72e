"""Rendering the measured claims: the Markdown table (claims.md's and the README's), claims.md, the plots, the
README section between the claims markers, and the plan's table."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from learner.analysis import claims as C
from services.experiments.reproduce.catalogue import load_catalogue, ppo_ensemble_arms
from services.experiments.reproduce.runs import RunReader
from services.experiments.reproduce.stages import BON_ARGS
from services.state.runlog import read_json


def fmt(x, spec: str = "+.3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def claims_table(rows: list[dict]) -> str:
    """The claims as a Markdown table (the README's and claims.md's)."""
    lines = ["| paper | claim | effect [95% CI] | threshold | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        if r["verdict"] == "not measured":
            eff = "not measured"
        else:
            e = r["effect"]
            eff = f"{fmt(e['point'])} [{fmt(e['lo'])}, {fmt(e['hi'])}]"
        thr = f"within +-{r['margin']:.3g}" if r.get("margin") is not None else f"{'>' if r['direction'] == 'above' else '<'} {r['threshold']:g}"
        lines.append(f"| {r['paper']} | {r['claim']} | {eff} | {thr} | **{r['verdict']}** |")
    return "\n".join(lines)


def claims_markdown(result: dict, figs: list[str]) -> str:
    rows = result["rows"]
    counts = {v: sum(r["verdict"] == v for r in rows) for v in (C.HOLDS, C.FAILS, C.INCONCLUSIVE, "not measured")}
    only = result.get("stages")
    scope = ["", f"This report holds the claims of the stage(s) {', '.join(only)} only (`tether reproduce --report-only --only "
                 f"{','.join(only)}`); the full table is claims.md of a whole reproduction."] if only else []
    out = ["# The papers' claims, measured on tether's default task", *scope, "",
           "Written by `tether reproduce` (services/experiments/reproduce/). Each effect is measured on every finished run of its stage; "
           f"the 95% interval is a two-level percentile bootstrap ({result['n_boot']} resamples: seeds within each arm, then each "
           "run's eval prompts, the same draw at every evaluation of a run; learner/analysis/claims.py). A claim **holds** when the "
           "whole interval is on the claimed side of its threshold, **does not hold** when it is wholly on the other side, and is "
           "**inconclusive** otherwise. Nothing was tuned until it won: every method runs its paper's settings scaled to a 4.5M-parameter policy.",
           "", f"Verdicts: {counts[C.HOLDS]} hold, {counts[C.FAILS]} do not hold, {counts[C.INCONCLUSIVE]} inconclusive, "
           f"{counts['not measured']} not measured.", "", claims_table(rows), "", "## How each effect is measured", ""]
    for r in rows:
        why = f" ({r['why']})" if r.get("why") else ""
        runs = ", ".join(f"{k} {v}" for k, v in r.get("effect", {}).get("n_runs", {}).items())
        det = "; ".join(f"{k} {fmt(v, '.3f')}" for k, v in (r.get("details") or {}).items())
        out.append(f"- **{r['paper']}: {r['claim']}**: {r['measure'] or '-'}{why}" + (f" [runs: {runs}]" if runs else "")
                   + (f". Measured: {det}" if det else ""))
    if result.get("unreadable_runs"):
        out += ["", "## Runs that could not be read (left out of every claim; rerun or repair them, then `tether reproduce --report-only`)", ""]
        out += [f"- `{d}`: {why}" for d, why in result["unreadable_runs"].items()]
    if result.get("timing"):
        out += ["", "## Time per stage (2 cores; measured from the run folders, without about half a minute of start-up per cell)",
                "", "| stage | cells finished | minutes |", "|---|---|---|"]
        total = 0.0
        for k, v in result["timing"].items():
            total += float(v.get("minutes", 0.0))
            out.append(f"| {k} | {v.get('cells')}{'/' + str(v['of']) if 'of' in v else ''} | {v.get('minutes', 0.0):.1f} |")
        out.append(f"| total | | {total:.1f} |")
    if figs:
        out += ["", "## Plots", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figs]
    return "\n".join(out) + "\n"


def draw_plots(out_dir: Path, dirs: dict[str, Path], reader: RunReader | None = None, stages: list[str] | None = None) -> list[str]:
    """claims_frontiers.png (gold frontier vs KL: Elastic Reset vs PPO + KL, SALSA vs baseline, the critic-free estimators
    vs PPO) and
    claims_ensembles.png (PPO gold vs iteration per proxy; best-of-n gold vs KL per aggregation); ``reader``: the
    report's runs (those the claims read are not read again)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from services.driver.report import save_figure

    reader = reader if reader is not None else RunReader()
    catalogue = load_catalogue()
    figs = []
    panels = [("elastic_reset", "Elastic Reset vs PPO + KL", [("elastic_reset", dirs["elastic_reset"]), ("ppo_kl005", dirs["elastic_reset"]),
                                                              ("ppo_kl001", dirs["overopt"])]),
              ("salsa", "SALSA vs one SFT model", [("salsa", dirs["salsa"]), ("sft_ref", dirs["salsa"])]),
              ("critic_free", "GRPO, Dr. GRPO, RLOO vs PPO (KL 0.01)", [("grpo", dirs["critic_free"]), ("dr_grpo", dirs["critic_free"]),
                                                                     ("rloo", dirs["critic_free"]), ("ppo_kl001", dirs["overopt"])])]
    panels = [p for p in panels if stages is None or p[0] in stages]  # a report of some stages plots theirs alone
    fig, axes = plt.subplots(1, max(len(panels), 1), figsize=(max(16 * len(panels) / 3, 6), 4), squeeze=False)
    drew = False
    for ax, (_, title, arms) in zip(axes[0], panels):
        runs = {m: reader.runs(d, m) for m, d in arms}
        views = [r.view() for rs in runs.values() for r in rs]
        if not views:
            ax.set_visible(False)
            continue
        grid = C.kl_grid(views, 60)
        for m, rs in runs.items():
            if not rs:
                continue
            F = np.stack([C.frontier(r.kl, r.gold.mean(axis=1), grid) for r in rs])
            line, = ax.plot(grid, F.mean(axis=0), label=f"{m} ({len(rs)} seeds)")
            ax.fill_between(grid, F.min(axis=0), F.max(axis=0), color=line.get_color(), alpha=0.15)
            for r in rs:
                ax.plot(r.kl, r.gold.mean(axis=1), ".", color=line.get_color(), alpha=0.35, ms=4)
        drew = True
        ax.set(title=title, xlabel="KL from pi_0 (nats)", ylabel="held-out gold (frontier; dots: evaluations)")
        ax.legend(fontsize=8)
    if drew:
        figs.append(str(save_figure(fig, Path(out_dir) / "claims_frontiers.png")))
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(16, 4))
    drew = False
    for ax, stage, label in ((axes[0], "ensembles", "25% label noise"), (axes[1], "ensembles_clean", "clean labels")):
        if stages is not None and stage not in stages:
            ax.set_visible(False)
            continue
        ens, _ = ppo_ensemble_arms(dirs, stage, reader, catalogue)
        if not any(ens.values()):
            ax.set_visible(False)
            continue
        for a, rs in ens.items():
            if not rs:
                continue
            n = min(len(r.steps) for r in rs)
            G = np.stack([r.gold.mean(axis=1)[:n] for r in rs])
            line, = ax.plot(rs[0].steps[:n], G.mean(axis=0), label=f"{a} ({len(rs)} seeds)")
            ax.fill_between(rs[0].steps[:n], G.min(axis=0), G.max(axis=0), color=line.get_color(), alpha=0.15)
        ax.set(title=f"PPO, KL 0, {label}", xlabel="iteration", ylabel="held-out gold (mean; band: seed range)")
        ax.legend(fontsize=8)
        drew = True
    path = Path(dirs["bon"]) / "samples.npz"
    if path.is_file() and (stages is None or "bon" in stages):
        from learner.analysis.best_of_n import bon_gold_per_prompt, bon_ns, kl_bon

        z = np.load(path)
        meta = read_json(Path(dirs["bon"]) / "bon.json").get("settings", {})
        ns = bon_ns(int(meta.get("n_best") or BON_ARGS["n_best"]))
        lam = float(meta.get("uwo_lambda", BON_ARGS["uwo_lambda"]))
        ax = axes[2]
        for key, style in (("noisy", "-"), ("clean", ":")):
            if f"proxy_{key}" not in z.files:
                continue
            m = z[f"proxy_{key}"]
            for agg, sel in (("single", m[:, :, :1]), ("mean", m), ("wco", m), ("uwo", m)):
                g = bon_gold_per_prompt(sel, z["gold"], ns, aggregation="mean" if agg == "single" else agg, uwo_lambda=lam).mean(axis=0)
                ax.plot(kl_bon(np.asarray(ns)), g, style, label=f"{key} {agg}")
        ax.set(title="best-of-n (solid: 25% noise, dotted: clean)", xlabel="KL_bon = log n - (n-1)/n", ylabel="gold of the pick")
        ax.legend(fontsize=7, ncol=2)
        drew = True
    else:
        axes[2].set_visible(False)
    if drew:
        figs.append(str(save_figure(fig, Path(out_dir) / "claims_ensembles.png")))
    plt.close(fig)
    return figs


README_START, README_END = "<!-- claims:start -->", "<!-- claims:end -->"


def update_readme(path: Path, rows: list[dict]) -> bool:
    """Replace what lies between the claims markers of ``path`` with the measured claims' table (and a line naming
    those not measured yet). False (the file untouched) when the markers are missing."""
    path = Path(path)
    text = path.read_text()
    i, j = text.find(README_START), text.find(README_END)
    if i < 0 or j < i:
        return False
    measured = [r for r in rows if r["verdict"] != "not measured"]
    missing = [r for r in rows if r["verdict"] == "not measured"]
    body = claims_table(measured) if measured else "(no claim measured yet)"
    if missing:
        papers = sorted({r["paper"] for r in missing})
        body += f"\n\nNot measured yet ({len(missing)} claims, their stages unfinished): {', '.join(papers)}; see docs/results/claims.md."
    path.write_text(text[: i + len(README_START)] + "\n" + body + "\n" + text[j:])
    return True


def plan_table(rows: list[dict]) -> str:
    """The plan: per stage its cells, those done, iterations, seconds per iteration (measured on its finished cells; '-':
    the default estimate) and minutes left."""
    lines = [f"{'stage':<15} {'cells':>5} {'done':>5} {'iters':>6} {'s/iter':>7} {'min left':>9}  what"]
    for r in rows:
        per = r.get("s_per_iteration")
        lines.append(f"{r['stage']:<15} {r['cells']:>5} {r['finished']:>5} {r['iterations']:>6} {'-' if per is None else f'{per:.1f}':>7} "
                     f"{r['minutes_left']:>9.0f}  {r['what']}")
    total = sum(r["minutes_left"] for r in rows)
    lines.append(f"{'total':<15} {'':>5} {'':>5} {'':>6} {'':>7} {total:>9.0f}  ({total / 60:.1f} h; s/iter '-': "
                 f"the default estimate until a cell of that stage finishes)")
    return "\n".join(lines)

