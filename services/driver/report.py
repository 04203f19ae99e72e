"""Run and comparison reports: an HTML page with plots (PNG copies beside it).

Per run: gold and proxy reward vs KL from the initial model; reward vs step with Elastic Reset
markers; drift vs step. Per comparison: every method's gold-vs-KL frontier on one chart, and the
proxy-gold gap. Gold-vs-KL charts also draw the fitted RL scaling law of Gao et al. 2022
(R(d) = d (alpha - beta log d), d = sqrt(KL), docs/methods.md s.4) when there are enough evaluations,
and the page lists its coefficients or says why there is no fit.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from learner.analysis.rl_fits import RLFit, fit_rl_runs  # noqa: E402
from services.state.runlog import read_metrics  # noqa: E402

KL_KEY, GOLD_KEY = "eval/kl_from_init_k3", "eval/gold_mean"

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def eval_points(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(KL, gold) of every held-out evaluation row, in log order; shapes (M,), (M,).

    The first one is the evaluation at iteration 0, before any update (the trainer evaluates at every
    iteration divisible by train.eval_every, 0 included), i.e. pi_0's gold on this run's eval prompts.
    """
    xs, ys = _series(rows, KL_KEY, GOLD_KEY)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def draw_rl_fit(ax, rf: RLFit, color: str, label: str) -> None:
    """The fitted curve r0 + R(d) as a dashed line on a gold-vs-KL axis (x = d^2), to just past the data;
    the predicted peak is starred when it falls inside that range."""
    if rf.fit is None or rf.kl_max <= 0:
        return
    d = np.linspace(0.0, math.sqrt(rf.kl_max) * 1.1, 120)  # (120,)
    ax.plot(d**2, rf.r0 + rf.fit.predict(d), "--", color=color, lw=1.4, label=label)
    if rf.fit.peak_r is not None and rf.fit.peak_d <= d[-1]:
        ax.plot([rf.fit.peak_d**2], [rf.r0 + rf.fit.peak_r], "*", color=color, ms=11, mec="k", mew=0.5)


def fit_table(fits: dict[str, RLFit], *, caption: str = "Fitted RL scaling law (Gao et al. 2022)", what: str = "run") -> str:
    """HTML table of alpha, beta, R^2, predicted peak (d*, KL* = d*^2, gold there) per name, or why there is no fit."""
    head = f"<tr><th>{html.escape(what)}</th>" + "".join(
        f"<th>{h}</th>" for h in ("alpha", "beta", "R^2", "peak d*", "peak KL*", "predicted peak gold", "points")) + "</tr>"
    body = ""
    for name, rf in fits.items():
        if rf.fit is None:
            body += (f"<tr><td>{html.escape(name)}</td><td colspan=6>no fit ({html.escape(str(rf.reason))}); curve not drawn</td>"
                     f"<td>{rf.n_points}</td></tr>")
            continue
        f = rf.fit
        peak = ("none (beta <= 0: no finite peak)", "-", "-") if not math.isfinite(f.peak_d) else (
            f"{f.peak_d:.3f}", f"{f.peak_d**2:.3f}", f"{rf.r0 + f.peak_r:+.3f}" if f.peak_r is not None else "-")
        body += (f"<tr><td>{html.escape(name)}</td><td>{f.alpha:.4f}</td><td>{f.beta:.4f}</td><td>{f.r2:.3f}</td>"
                 + "".join(f"<td>{html.escape(p)}</td>" for p in peak) + f"<td>{f.n_points}</td></tr>")
    note = ("<p>R(d) = d (alpha - beta log d), d = sqrt(KL(pi || pi_0)), gold recentred to each run's iteration-0 evaluation; "
            "peak d* = exp(alpha / beta - 1). Dashed curves on the gold-vs-KL charts; a star marks a peak inside the measured range.</p>")
    return f"<h2>{html.escape(caption)}</h2>{note}<table>{head}{body}</table>"


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_plots(run_dir: Path, name: str, *, fit: RLFit | None = None) -> list[Path]:
    """The run's three charts; ``fit`` (default: fitted here) is drawn over the gold-vs-KL points."""
    rows = read_metrics(run_dir)
    fit = fit if fit is not None else fit_rl_runs([eval_points(rows)])
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, c in (("eval/gold_mean", "gold R*", COLORS[0]), ("eval/proxy_mean", "proxy (aggregate)", COLORS[1])):
        xs, ys = _series(rows, "eval/kl_from_init_k3", key)
        ax.plot(xs, ys, "o-", label=label, color=c, ms=4)
    pre = [(r["eval/kl_from_init_k3"], r["eval/gold_mean"]) for r in rows
           if r.get("eval/before_reset") and r.get("eval/kl_from_init_k3") is not None and r.get("eval/gold_mean") is not None]
    if pre:  # Elastic Reset is read on its whole trajectory: the points just before each reset, not only its just-reset end
        ax.plot([p[0] for p in pre], [p[1] for p in pre], "v", color="k", ms=8, mfc="none", label="gold just before a reset")
    draw_rl_fit(ax, fit, COLORS[0], "gold, fitted RL law (Gao et al.)")
    ax.set_xlabel("KL(pi || pi_0), nats (held-out prompts)")
    ax.set_ylabel("reward")
    ax.set_title(f"{name}: reward vs KL from the initial policy")
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(save_figure(fig, run_dir / "reward_vs_kl.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, c in (("reward/proxy_mean", "proxy (train)", COLORS[1]), ("reward/gold_mean", "gold (train)", COLORS[0])):
        xs, ys = _series(rows, "step", key)
        ax.plot(xs, ys, "-", label=label, color=c)
    xs, ys = _series(rows, "step", "eval/gold_mean")
    ax.plot(xs, ys, "o", label="gold (held-out eval)", color=COLORS[0], ms=4)
    for r in rows:
        if r.get("elastic_reset/event"):
            ax.axvline(r["step"], color="grey", ls="--", lw=1)
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("reward")
    ax.set_title(f"{name}: reward vs step (dashed: Elastic Reset)")
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(save_figure(fig, run_dir / "reward_vs_step.png"))

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs, ys = _series(rows, "step", "kl/from_init")
    ax.plot(xs, ys, label="KL from init (train rollouts)")
    xs, ys = _series(rows, "step", "kl/to_ref")
    ax.plot(xs, ys, label="KL to reference (reward's estimator)")
    ax2 = ax.twinx()
    xs, ys = _series(rows, "step", "drift/ppl_under_init")
    ax2.plot(xs, ys, color=COLORS[3], ls=":", label="perplexity under pi_0")
    ax2.set_ylabel("perplexity under pi_0")
    ax.set_xlabel("PPO iteration")
    ax.set_ylabel("nats")
    ax.set_title(f"{name}: drift")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8)
    ax.grid(alpha=0.3)
    out.append(save_figure(fig, run_dir / "drift_vs_step.png"))
    return out


def _per_run_plot(runs: dict[str, Path], x: str, y: str, *, xlabel: str, ylabel: str, title: str, path: Path,
                  fits: dict[str, RLFit] | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for i, (name, d) in enumerate(runs.items()):
        xs, ys = _series(read_metrics(d), x, y)
        ax.plot(xs, ys, "o-", label=name, color=COLORS[i % len(COLORS)], ms=4)
        if fits and name in fits:
            draw_rl_fit(ax, fits[name], COLORS[i % len(COLORS)], f"{name}: fitted RL law")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def run_fits(runs: dict[str, Path]) -> dict[str, RLFit]:
    """One RL-law fit per run, on that run's own evaluations."""
    return {name: fit_rl_runs([eval_points(read_metrics(d))]) for name, d in runs.items()}


def comparison_plots(runs: dict[str, Path], out_dir: Path, *, fits: dict[str, RLFit] | None = None) -> list[Path]:
    fits = fits if fits is not None else run_fits(runs)
    return [
        _per_run_plot(runs, "eval/kl_from_init_k3", "eval/gold_mean", xlabel="KL(pi || pi_0), nats", ylabel="gold reward R* (held-out)",
                      title="gold reward vs KL from the initial policy (dashed: fitted RL law)", path=out_dir / "frontier_gold_vs_kl.png",
                      fits=fits),
        _per_run_plot(runs, "step", "eval/proxy_gold_gap", xlabel="PPO iteration", ylabel="proxy - gold (held-out)",
                      title="proxy-gold gap (overoptimisation shows as a growing gap)", path=out_dir / "proxy_gold_gap.png"),
    ]


def img_tag(p: Path) -> str:
    b = base64.b64encode(p.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{b}" alt="{html.escape(p.stem)}"><figcaption>{html.escape(p.name)}</figcaption></figure>'


def _table(summaries: dict[str, dict]) -> str:
    keys = ["eval/gold_mean", "eval/proxy_mean", "eval/kl_from_init_k3", "eval/ppl_under_init", "eval/proxy_gold_gap"]
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = ""
    for name, s in summaries.items():
        body += f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{s.get(k, float('nan')):.3f}</td>" for k in keys) + "</tr>"
    return f"<table><tr><th>run</th>{head}</tr>{body}</table>"


PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}} figure{{display:inline-block;margin:.5em}}
img{{max-width:520px;border:1px solid #ddd}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style>
</head><body><h1>{title}</h1>{body}</body></html>"""


def samples_section(run_dir: Path, *, per_eval: int = 4) -> str:
    """Samples a person can read, at the start (pi_0), at the gold peak and at the end: per evaluation the samples the
    proxy rates best and those it rates far above the gold (z(proxy) - z(gold)). Empty without samples files."""
    from services.state.runlog import finite_number, read_samples, sample_steps

    steps = sample_steps(run_dir)
    if not steps:
        return ""
    evals = {}
    for st in steps:
        rows = [r for r in read_samples(run_dir, st) if finite_number(r.get("proxy"))]
        if rows:
            evals[st] = rows
    if not evals:
        return ""
    golds = {st: [r["gold"] for r in rows if finite_number(r.get("gold"))] for st, rows in evals.items()}
    have_gold = all(len(g) == len(evals[st]) for st, g in golds.items())
    picks = {"start": min(evals), "end": max(evals)}
    if have_gold:
        picks["gold peak"] = max(evals, key=lambda st: float(np.mean(golds[st])))
    out = ["<h2>samples</h2><p>Held-out samples at the start, at the gold peak and at the end: the proxy's favourites and "
           "the samples it rates far above the gold (standardised within the evaluation).</p>"]
    for label in ("start", "gold peak", "end"):
        if label not in picks:
            continue
        st = picks[label]
        rows = evals[st]
        p = np.array([r["proxy"] for r in rows], dtype=np.float64)
        order = list(np.argsort(-p)[: per_eval // 2])
        if have_gold:
            g = np.array(golds[st], dtype=np.float64)
            z = lambda a: (a - a.mean()) / (a.std() if a.std() > 0 else 1.0)  # noqa: E731
            for i in np.argsort(-(z(p) - z(g))):
                if len(order) >= per_eval:
                    break
                if i not in order:
                    order.append(i)
        mean_gold = f", mean gold {np.mean(golds[st]):+.2f}" if have_gold else ""
        body = ""
        for i in order:
            r = rows[i]
            gold = f"{r['gold']:+.2f}" if finite_number(r.get("gold")) else "-"
            body += (f"<tr><td>{html.escape(str(r.get('prompt', '')))}<b>{html.escape(str(r.get('response', '')))}</b></td>"
                     f"<td>{r['proxy']:+.2f}</td><td>{gold}</td></tr>")
        out.append(f"<h3>{html.escape(label)}: iteration {st} (mean proxy {p.mean():+.2f}{mean_gold})</h3>"
                   f"<table><tr><th>prompt + <b>response</b></th><th>proxy</th><th>gold</th></tr>{body}</table>")
    return "".join(out)


def write_run_report(run_dir: Path, name: str) -> Path:
    run_dir = Path(run_dir)
    fit = fit_rl_runs([eval_points(read_metrics(run_dir))])
    plots = run_plots(run_dir, name, fit=fit)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    cfg = (run_dir / "config.json").read_text() if (run_dir / "config.json").exists() else "{}"
    body = (_table({name: summary}) + "".join(img_tag(p) for p in plots) + fit_table({name: fit}) + samples_section(run_dir)
            + f"<h2>config</h2><pre>{html.escape(cfg)}</pre>")
    page = run_dir / "report.html"
    page.write_text(PAGE.format(title=f"tether run: {html.escape(name)}", body=body))
    return page


def write_comparison_report(runs: dict[str, Path], out_dir: Path, title: str) -> Path:
    out_dir = Path(out_dir)
    fits = run_fits(runs)
    plots = comparison_plots(runs, out_dir, fits=fits)
    summaries = {n: json.loads((d / "summary.json").read_text()) for n, d in runs.items() if (d / "summary.json").exists()}
    links = "".join(f'<li><a href="{html.escape(d.name)}/report.html">{html.escape(n)}</a></li>' for n, d in runs.items())
    body = _table(summaries) + "".join(img_tag(p) for p in plots) + fit_table(fits) + f"<h2>runs</h2><ul>{links}</ul>"
    page = out_dir / "report.html"
    page.write_text(PAGE.format(title=html.escape(title), body=body))
    return page
