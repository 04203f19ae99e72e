"""A sweep's results: per-cell finals, mean +- std per setting, the Gao RL fits per method, plots, the HTML report."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from services.state.runlog import run_state
from services.experiments.sweep.spec import SweepSpecError
from services.state.runlog import read_json

log = logging.getLogger(__name__)

FINAL_KEYS = {"gold": "eval/gold_mean", "proxy": "eval/proxy_mean", "kl": "eval/kl_from_init_k3", "gap": "eval/proxy_gold_gap"}



def _stat(xs: list[float]) -> dict:
    a = np.asarray([x for x in xs if x is not None and math.isfinite(x)], dtype=np.float64)
    return {"mean": float(a.mean()) if a.size else None, "std": float(a.std(ddof=1)) if a.size > 1 else None, "n": int(a.size)}


def summarise(sweep_dir: str | Path) -> dict:
    """Numbers of the sweep report (= sweep_summary.json): per cell, per method x setting (mean, std, n over
    seeds of the final gold / proxy / KL / gap), and per method the RL-law fit on its pooled evaluations."""
    return _summarise(Path(sweep_dir))[0]


def _summarise(sweep_dir: Path) -> tuple[dict, dict]:
    from learner.analysis.rl_fits import RLFit, fit_rl_runs
    from services.driver.report import eval_points
    from services.state.runlog import read_metrics

    meta = read_json(sweep_dir / "cells.json")
    if not meta.get("cells"):
        raise SweepSpecError(f"{sweep_dir} is not a sweep folder (no cells.json); run `tether sweep SPEC.yaml` first")
    cells, groups, points = {}, {}, {}
    for c in meta["cells"]:
        d = sweep_dir / c["dir"]
        s = read_json(d / "summary.json")
        state = run_state(d)
        final = None
        if state == "finished":
            final = {k: s.get(key) for k, key in FINAL_KEYS.items()}
            if final["gap"] is None and final["proxy"] is not None and final["gold"] is not None:
                final["gap"] = final["proxy"] - final["gold"]
        cells[c["id"]] = {"method": c["method"], "setting": c["setting"], "seed": c["seed"], "dir": c["dir"], "state": state, "final": final}
        g = groups.setdefault((c["method"], c["setting"]), {k: [] for k in FINAL_KEYS})
        for k in FINAL_KEYS:
            if final:
                g[k].append(final[k])
        rows = read_metrics(d)
        cells[c["id"]]["overopt"] = _overopt(rows)
        # the whole trajectory, not only the endpoint (Elastic Reset's just-reset end is its low point): the best
        # evaluation and, for Elastic Reset, the evaluations just before each reset
        ev = [r for r in rows if r.get("eval/gold_mean") is not None]
        if ev:
            best = max(ev, key=lambda r: r["eval/gold_mean"])
            cells[c["id"]]["best_eval"] = {"step": best["step"], "gold": best["eval/gold_mean"], "kl": best.get("eval/kl_from_init_k3")}
            cells[c["id"]]["before_reset"] = [{"step": r["step"], "gold": r["eval/gold_mean"], "proxy": r.get("eval/proxy_mean"),
                                               "kl": r.get("eval/kl_from_init_k3")} for r in ev if r.get("eval/before_reset")]
        kl, gold = eval_points(rows)
        if len(kl):
            points.setdefault(c["method"], []).append((kl, gold))
            cells[c["id"]]["rl_fit"] = fit_rl_runs([(kl, gold)]).as_dict()  # this cell alone (the method's pooled fit is below)
    fits: dict[str, RLFit] = {m: fit_rl_runs(points.get(m, [])) for m in dict.fromkeys(c["method"] for c in meta["cells"])}
    summary = {
        "name": meta["spec"]["name"], "spec": meta["spec"], "cells": cells,
        "groups": [{"method": m, "setting": st, **{k: _stat(v) for k, v in g.items()}} for (m, st), g in groups.items()],
        "fits": {m: f.as_dict() for m, f in fits.items()},
    }
    return summary, fits


def _overopt(rows: list[dict]) -> dict | None:
    """The gold peak and fall of one cell (learner.analysis.overopt), or None with fewer than 3 evaluations."""
    from learner.analysis.overopt import peak_and_fall

    ev = [r for r in rows if r.get("eval/gold_mean") is not None and r.get("eval/proxy_mean") is not None]
    if len(ev) < 3:
        return None
    o = peak_and_fall([r["step"] for r in ev], [r["eval/gold_mean"] for r in ev], [r["eval/proxy_mean"] for r in ev],
                      [r.get("eval/kl_from_init_k3") or 0.0 for r in ev])
    return {**o.as_dict(), "overoptimised": o.overoptimised()}


def _trajectory(rows: list[dict], key: str) -> list[tuple[float, float]]:
    """(KL, y) of every evaluation row; y = key, the gap falling back to proxy - gold in logs without it."""
    out = []
    for r in rows:
        kl, y = r.get("eval/kl_from_init_k3"), r.get(key)
        if y is None and key == "eval/proxy_gold_gap" and r.get("eval/proxy_mean") is not None and r.get("eval/gold_mean") is not None:
            y = r["eval/proxy_mean"] - r["eval/gold_mean"]
        if kl is not None and y is not None:
            out.append((kl, y))
    return out


def _plots(sweep_dir: Path, summary: dict, fits: dict) -> list[Path]:
    """Gold vs KL (trajectories, final points, each method's fitted law) and the proxy-gold gap vs KL.
    One colour per method, one marker shape per grid setting."""
    from services.driver.report import COLORS, save_figure, draw_rl_fit, plt
    from services.state.runlog import read_metrics

    methods = list(summary["fits"])
    colour = {m: COLORS[i % len(COLORS)] for i, m in enumerate(methods)}
    settings = {m: list(dict.fromkeys(c["setting"] for c in summary["cells"].values() if c["method"] == m)) for m in methods}
    markers = "osD^vPX*<>"
    rows = {cid: read_metrics(sweep_dir / c["dir"]) for cid, c in summary["cells"].items()}
    out = []
    for key, ylabel, title, fname in (
        ("eval/gold_mean", "gold reward R* (held-out)", "gold vs KL from pi_0 (dashed: fitted RL law per method, Gao et al.)",
         "frontier_gold_vs_kl.png"),
        ("eval/proxy_gold_gap", "proxy - gold (held-out)", "proxy-gold gap vs KL (overoptimisation: a growing gap)", "gap_vs_kl.png"),
    ):
        fig, ax = plt.subplots(figsize=(7.4, 4.8))
        labelled = set()
        for cid, c in summary["cells"].items():
            pts = _trajectory(rows[cid], key)
            if not pts:
                continue
            m, col = c["method"], colour[c["method"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=col, lw=0.8, alpha=0.55)
            lab = f"{m} {c['setting']}" if len(settings[m]) > 1 else m
            ax.plot([pts[-1][0]], [pts[-1][1]], markers[settings[m].index(c["setting"]) % len(markers)], color=col, ms=7, mec="k", mew=0.5,
                    label=None if lab in labelled else lab)
            labelled.add(lab)
        if key == "eval/gold_mean":
            for m in methods:
                draw_rl_fit(ax, fits[m], colour[m], f"{m}: fitted RL law")
        ax.set_xlabel("KL(pi || pi_0), nats (held-out prompts)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=7)
        out.append(save_figure(fig, sweep_dir / fname))
    # gold and proxy against training iterations: over-optimisation shows as a gold peak while the proxy still climbs
    fig, ax = plt.subplots(figsize=(7.4, 4.8))
    labelled = set()
    for cid, c in summary["cells"].items():
        ev = [r for r in rows[cid] if r.get("eval/gold_mean") is not None and r.get("eval/proxy_mean") is not None]
        if not ev:
            continue
        m, col = c["method"], colour[c["method"]]
        steps = [r["step"] for r in ev]
        ax.plot(steps, [r["eval/gold_mean"] for r in ev], "-", color=col, lw=1.2, label=None if m in labelled else f"{m}: gold")
        ax.plot(steps, [r["eval/proxy_mean"] for r in ev], "--", color=col, lw=0.9, alpha=0.7, label=None if m in labelled else f"{m}: proxy")
        labelled.add(m)
    ax.set_xlabel("iteration")
    ax.set_ylabel("reward (held-out prompts)")
    ax.set_title("gold (solid) and proxy (dashed) per cell", fontsize=10)
    ax.grid(alpha=0.3)
    if labelled:
        ax.legend(fontsize=7)
    out.append(save_figure(fig, sweep_dir / "reward_vs_step.png"))
    return out


def _cell(x: dict) -> str:
    if x["mean"] is None:
        return "-"
    return f"{x['mean']:+.3f}" + (f" &plusmn; {x['std']:.3f}" if x["std"] is not None else "")


def write_sweep_report(sweep_dir: str | Path) -> Path:
    """report.html (+ frontier_gold_vs_kl.png, gap_vs_kl.png) and sweep_summary.json in the sweep folder."""
    import html

    from services.driver.report import PAGE, img_tag, fit_table

    sweep_dir = Path(sweep_dir)
    summary, fits = _summarise(sweep_dir)
    plots = _plots(sweep_dir, summary, fits)
    (sweep_dir / "sweep_summary.json").write_text(json.dumps(summary, indent=2))
    head = "<tr><th>method</th><th>setting</th><th>seeds</th>" + "".join(f"<th>final {k} (mean &plusmn; std)</th>" for k in FINAL_KEYS) + "</tr>"
    rows = "".join(f"<tr><td>{html.escape(g['method'])}</td><td>{html.escape(g['setting'])}</td><td>{g['gold']['n']}</td>"
                   + "".join(f"<td>{_cell(g[k])}</td>" for k in FINAL_KEYS) + "</tr>" for g in summary["groups"])
    oo = [(cid, c) for cid, c in summary["cells"].items() if c.get("overopt")]
    oo_rows = "".join(
        f"<tr><td>{html.escape(cid)}</td><td>{o['initial']:+.3f}</td><td>{o['peak']:+.3f} (step {o['peak_step']:g}, KL {o['kl_at_peak']:.3g})</td>"
        f"<td>{o['final']:+.3f}</td><td>{o['fall_fraction']:.0%}</td><td>{o['proxy_rise']:+.3f}</td><td>{'yes' if o['overoptimised'] else 'no'}</td></tr>"
        for cid, c in oo for o in [c["overopt"]])
    oo_table = ("<h2>over-optimisation per cell</h2><p>peak: of the gold's 3-point moving average; final: mean of the last 3 "
                "evaluations; fall: (peak - final) / (peak - initial); proxy rise: final proxy - proxy at the gold peak; "
                "over-optimised: fall &ge; 30% with the proxy still rising.</p><table><tr><th>cell</th><th>initial gold</th><th>peak</th>"
                f"<th>final</th><th>fall</th><th>proxy rise</th><th>over-optimised</th></tr>{oo_rows}</table>") if oo else ""
    links = "".join(f'<li><a href="{html.escape(c["dir"])}/report.html">{html.escape(cid)}</a> ({html.escape(str(c["state"]))})</li>'
                    for cid, c in summary["cells"].items())
    spec = summary["spec"]
    body = (f"<p>base {html.escape(spec['base'])}; seeds {html.escape(str(spec['seeds']))}; final = the evaluation at the end of each "
            "finished cell; std over seeds (n = seeds finished). KL = eval/kl_from_init_k3.</p>"
            f"<h2>final results</h2><table>{head}{rows}</table>"
            + oo_table + fit_table(fits, caption="Fitted RL scaling law per method (pooled over its cells)", what="method")
            + "".join(img_tag(p) for p in plots) + f"<h2>cells</h2><ul>{links}</ul>")
    page = sweep_dir / "report.html"
    page.write_text(PAGE.format(title=f"tether sweep: {html.escape(summary['name'])}", body=body))
    return page


def format_table(summary: dict) -> str:
    """The final table and the fits as plain text (the CLI prints it)."""
    def f(x: dict) -> str:
        return "-" if x["mean"] is None else f"{x['mean']:+.3f}" + (f"±{x['std']:.3f}" if x["std"] is not None else "")

    lines = [f"{'method':<16} {'setting':<24} {'n':>2} {'gold':>14} {'proxy':>14} {'KL':>14} {'gap':>14}"]
    for g in summary["groups"]:
        lines.append(f"{g['method']:<16} {g['setting']:<24} {g['gold']['n']:>2} " + " ".join(f"{f(g[k]):>14}" for k in FINAL_KEYS))
    oo = {cid: c["overopt"] for cid, c in summary["cells"].items() if c.get("overopt")}
    if oo:
        lines.append(f"{'over-optimisation':<40} {'gold0':>7} {'peak':>7} {'@step':>5} {'final':>7} {'fall':>5} {'proxy+':>7}")
        for cid, o in oo.items():
            lines.append(f"{cid:<40} {o['initial']:>+7.3f} {o['peak']:>+7.3f} {o['peak_step']:>5g} {o['final']:>+7.3f} {o['fall_fraction']:>5.0%} "
                         f"{o['proxy_rise']:>+7.3f}" + ("  over-optimised" if o["overoptimised"] else ""))
    lines.append(f"{'fit (Gao RL)':<16} {'alpha':>8} {'beta':>8} {'R^2':>6} {'peak KL':>8} {'points':>6}")
    for m, fit in summary["fits"].items():
        if "error" in fit:
            lines.append(f"{m:<16} no fit: {fit['error']}")
        else:
            n = lambda v, spec=".4f": "-" if v is None else format(v, spec)  # noqa: E731
            lines.append(f"{m:<16} {n(fit['alpha']):>8} {n(fit['beta']):>8} {n(fit['r2'], '.3f'):>6} {n(fit['peak_kl'], '.4g'):>8} "
                         f"{fit['n_points']:>6}")
    return "\n".join(lines)


