"""Run and comparison reports: an HTML page with plots (PNG copies beside it).

Per run: gold and proxy reward vs KL from the initial model; reward vs step with Elastic Reset
markers; drift vs step. Per comparison: every method's gold-vs-KL frontier on one chart, and the
proxy-gold gap.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from services.runlog import read_metrics  # noqa: E402

COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _series(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_plots(run_dir: Path, name: str) -> list[Path]:
    rows = read_metrics(run_dir)
    out = []
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, label, c in (("eval/gold_mean", "gold R*", COLORS[0]), ("eval/proxy_mean", "proxy (aggregate)", COLORS[1])):
        xs, ys = _series(rows, "eval/kl_from_init_k3", key)
        ax.plot(xs, ys, "o-", label=label, color=c, ms=4)
    ax.set_xlabel("KL(pi || pi_0), nats (held-out prompts)")
    ax.set_ylabel("reward")
    ax.set_title(f"{name}: reward vs KL from the initial policy")
    ax.legend()
    ax.grid(alpha=0.3)
    out.append(_save(fig, run_dir / "reward_vs_kl.png"))

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
    out.append(_save(fig, run_dir / "reward_vs_step.png"))

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
    out.append(_save(fig, run_dir / "drift_vs_step.png"))
    return out


def _per_run_plot(runs: dict[str, Path], x: str, y: str, *, xlabel: str, ylabel: str, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for i, (name, d) in enumerate(runs.items()):
        xs, ys = _series(read_metrics(d), x, y)
        ax.plot(xs, ys, "o-", label=name, color=COLORS[i % len(COLORS)], ms=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def comparison_plots(runs: dict[str, Path], out_dir: Path) -> list[Path]:
    return [
        _per_run_plot(runs, "eval/kl_from_init_k3", "eval/gold_mean", xlabel="KL(pi || pi_0), nats", ylabel="gold reward R* (held-out)",
                      title="gold reward vs KL from the initial policy", path=out_dir / "frontier_gold_vs_kl.png"),
        _per_run_plot(runs, "step", "eval/proxy_gold_gap", xlabel="PPO iteration", ylabel="proxy - gold (held-out)",
                      title="proxy-gold gap (overoptimisation shows as a growing gap)", path=out_dir / "proxy_gold_gap.png"),
    ]


def _img(p: Path) -> str:
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


def write_run_report(run_dir: Path, name: str) -> Path:
    run_dir = Path(run_dir)
    plots = run_plots(run_dir, name)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    cfg = (run_dir / "config.json").read_text() if (run_dir / "config.json").exists() else "{}"
    body = _table({name: summary}) + "".join(_img(p) for p in plots) + f"<h2>config</h2><pre>{html.escape(cfg)}</pre>"
    page = run_dir / "report.html"
    page.write_text(PAGE.format(title=f"tether run: {html.escape(name)}", body=body))
    return page


def write_comparison_report(runs: dict[str, Path], out_dir: Path, title: str) -> Path:
    out_dir = Path(out_dir)
    plots = comparison_plots(runs, out_dir)
    summaries = {n: json.loads((d / "summary.json").read_text()) for n, d in runs.items() if (d / "summary.json").exists()}
    links = "".join(f'<li><a href="{html.escape(d.name)}/report.html">{html.escape(n)}</a></li>' for n, d in runs.items())
    body = _table(summaries) + "".join(_img(p) for p in plots) + f"<h2>runs</h2><ul>{links}</ul>"
    page = out_dir / "report.html"
    page.write_text(PAGE.format(title=html.escape(title), body=body))
    return page
