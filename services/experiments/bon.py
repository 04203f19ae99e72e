"""`tether bon`: best-of-n gold and proxy curves vs KL, per ensemble aggregation, with and without label noise.

Coste et al. 2023 (docs/methods.md s.3), figure "BoN with and without label noise": sample N responses per
held-out prompt from pi_0, pick the best of n by the aggregated proxy score (mean / WCO / UWO), and
plot the gold reward of the pick against KL_bon(n) = log n - (n - 1) / n. The expectation for every
n <= N comes from the same N samples with the unbiased estimator (learner.analysis.best_of_n). Each gold
curve is fitted with Gao et al. 2022's best-of-n form R(d) = d (alpha - beta d), d = sqrt(KL),
on rewards recentred at pi_0 (learner.analysis.scaling_laws).

"Clean" is a second proxy ensemble trained like the first but on unflipped gold labels
(proxy.label_noise=0); it scores the very same samples, so the two differ only in their labels.
"""
from __future__ import annotations

import html
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learner.analysis.best_of_n import bon_ns, ensemble_bon_curves
from learner.analysis.scaling_laws import bon_form, fit_bon_curve
from learner.config import TetherConfig
from learner.methods.ensemble import AGGREGATIONS
from tasks.contract import HELDOUT_SEED_OFFSET

log = logging.getLogger(__name__)
BON_SEED = 20_000_003  # sampling seed of chunk c is BON_SEED + c: a rerun draws the same samples
PROMPT_SEED_OFFSET = HELDOUT_SEED_OFFSET  # the driver's held-out eval prompts (a prefix of ours): BoN(1) ~ eval/gold_mean at step 0


def sample_and_score(roles, prompts, n_max: int, *, chunk: int = 256, progress: bool = True) -> dict:
    """n_max samples per prompt from the roles' (initial) policy, scored by the roles' proxy ensemble and gold.

    Returns {"texts": P*N strings (prompt-major), "proxy": (P, N, k), "gold": (P, N), "response_len": (P, N),
    "drift": {"bon/kl_from_init_k1", "bon/kl_from_init_k3"} sample-weighted means (about 0: these are pi_0's own samples)}.
    """
    from tasks.contract import PromptSet

    ps = prompts if isinstance(prompts, PromptSet) else PromptSet(list(prompts))
    flat = ps.repeat_each(n_max)  # (P*N,) prompt-major
    texts, proxy, gold, lens = [], [], [], []
    kl = {"bon/kl_from_init_k1": 0.0, "bon/kl_from_init_k3": 0.0}
    bar = tqdm(total=len(flat), desc="best-of-n samples", unit="sample", disable=not progress)
    try:
        for c, s in enumerate(range(0, len(flat), chunk)):
            part = PromptSet(flat.texts[s : s + chunk], None if flat.ids is None else flat.ids[s : s + chunk], flat.meta[s : s + chunk])
            r = roles.generate(part.texts, BON_SEED + c, None, part.ids)
            if part.meta:
                r.meta = list(part.meta)
            scored, drift = roles.score_and_drift(r, "bon")
            texts += r.texts
            proxy += scored.proxy_scores
            gold += scored.gold
            lens += [len(x) for x in r.response_ids]
            for key in kl:
                kl[key] += drift[key] * len(part) / len(flat)
            bar.update(len(part))
    finally:
        bar.close()
    P = len(ps)
    return {
        "texts": texts,
        "proxy": np.asarray(proxy, dtype=np.float64).reshape(P, n_max, -1),  # (P, N, k)
        "gold": np.asarray(gold, dtype=np.float64).reshape(P, n_max),  # (P, N)
        "response_len": np.asarray(lens, dtype=np.int64).reshape(P, n_max),  # (P, N)
        "drift": kl,
    }


def score_texts(ensemble, texts: list[str], *, chunk: int = 256) -> np.ndarray:
    """(B, k) member scores of an in-process learner.models.reward.ProxyEnsemble, in chunks."""
    with torch.no_grad():
        parts = [ensemble.score_texts(texts[i : i + chunk]).double().numpy() for i in range(0, len(texts), chunk)]
    return np.concatenate(parts, axis=0)


def _finite(x):
    """JSON has no inf / nan: write null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def run_bon(cfg: TetherConfig, out_dir: Path, *, n_max: int, n_prompts: int, n_best: int | None = None, clean_cfg: TetherConfig | None = None,
            aggregations: tuple[str, ...] = AGGREGATIONS, uwo_lambda: float = 0.5, chunk: int = 256, progress: bool = True,
            cfg_source: str = "<config>", clean_cfg_source: str | None = None, roles=None) -> dict:
    """Best-of-n curves for every (ensemble, aggregation); writes bon.json, samples.npz, bon_gold.png, bon_proxy.png, report.html.

    Assets are resolved first (tasks.store.AssetError, naming the prepare command, before anything loads).
    ``n_max``: samples per prompt N; ``n_best``: the largest n estimated (default N; n < N lowers the estimator's
    variance, Gao et al. use N well above n). ``uwo_lambda``: Coste et al. use 0.5 for best-of-n. Besides every
    ensemble aggregation, each ensemble's first member alone is a curve ("<ensemble>/single"): the single proxy.
    Returns what bon.json holds.
    """
    from learner.models.device import set_threads
    from tasks import get_task

    if n_max < 1 or n_prompts < 1:
        raise ValueError(f"n_max and n_prompts must be >= 1, got {n_max} and {n_prompts}")
    n_best = n_max if n_best is None else n_best
    if not 1 <= n_best <= n_max:
        raise ValueError(f"n_best must be between 1 and the samples per prompt ({n_max}), got {n_best}")
    bad = [a for a in aggregations if a not in AGGREGATIONS]
    if bad:
        raise ValueError(f"unknown aggregation {bad[0]!r}; accepted: {', '.join(AGGREGATIONS)}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.train.threads)
    task = get_task(cfg)
    paths = task.resolve(cfg_source=cfg_source)
    if any(p == paths.gold for p in paths.proxies):
        raise ValueError("best-of-n compares proxies against a held-out gold, and this config's gold is one of its proxies "
                         "(e.g. task.objective toxicity); choose proxies other than the gold")
    clean_paths = get_task(clean_cfg).resolve(cfg_source=clean_cfg_source or cfg_source) if clean_cfg is not None else None
    prompts = task.prompts("heldout", n_prompts, seed=cfg.train.seed + PROMPT_SEED_OFFSET)
    timing: dict[str, float] = {}

    t = time.perf_counter()
    own_roles = roles is None
    if own_roles:
        from actors.roleset import make_roleset

        roles = make_roleset(cfg, paths)
    timing["time_s/start_roles"] = time.perf_counter() - t
    t = time.perf_counter()
    try:
        s = sample_and_score(roles, prompts, n_max, chunk=chunk, progress=progress)
    finally:
        if own_roles:
            roles.close()
    timing["time_s/sample_and_score"] = time.perf_counter() - t
    members = {"noisy": s["proxy"]}  # (P, N, k)
    if clean_paths is not None:
        from learner.models.reward import ProxyEnsemble

        t = time.perf_counter()
        ens = ProxyEnsemble(clean_paths.proxies, aggregation="mean", uwo_lambda=uwo_lambda, max_len=clean_cfg.proxy.max_len)
        members["clean"] = score_texts(ens, s["texts"], chunk=chunk).reshape(len(prompts), n_max, -1)  # whole texts: clean proxies are tether-trained
        timing["time_s/clean_score"] = time.perf_counter() - t

    t = time.perf_counter()
    ns = bon_ns(n_best)
    curves = {}
    for ens_name, m in members.items():
        for a in (*aggregations, "single"):
            c = ensemble_bon_curves(m[..., :1] if a == "single" else m, s["gold"], ns, aggregation="mean" if a == "single" else a,
                                    uwo_lambda=uwo_lambda)
            c["fit"] = fit_bon_curve(c["kl"], c["gold"])
            curves[f"{ens_name}/{a}"] = c
    timing["time_s/estimate"] = time.perf_counter() - t
    np.savez_compressed(out_dir / "samples.npz", gold=s["gold"], response_len=s["response_len"],
                        **{f"proxy_{k}": v for k, v in members.items()})
    (out_dir / "samples.jsonl").write_text("".join(json.dumps({"prompt": i // n_max, "gold": g, "text": x}) + "\n"
                                                  for i, (x, g) in enumerate(zip(s["texts"], s["gold"].reshape(-1).tolist()))))
    timing["time_s/total"] = time.perf_counter() - t_start
    result = {
        "settings": {
            "name": cfg.name, "n_max": n_max, "n_best": n_best, "n_prompts": n_prompts, "n_samples": n_max * n_prompts, "ns": ns,
            "aggregations": [*aggregations, "single"], "uwo_lambda": uwo_lambda, "ensembles": list(members),
            "label_noise": {"noisy": cfg.proxy.label_noise, **({"clean": clean_cfg.proxy.label_noise} if clean_cfg is not None else {})},
            "n_members": {k: int(v.shape[2]) for k, v in members.items()},
            "runtime/mode": cfg.runtime.mode, "runtime/engine": cfg.runtime.engine, "sample_seed": BON_SEED,
            "prompt_seed": cfg.train.seed + PROMPT_SEED_OFFSET, "policy": str(paths.policy),
            "proxies": {"noisy": [str(p) for p in paths.proxies], **({"clean": [str(p) for p in clean_paths.proxies]} if clean_paths else {})},
        },
        "samples": {"gold/mean": float(s["gold"].mean()), "gold/std": float(s["gold"].std()),
                    "rollout/response_len": float(s["response_len"].mean()), **s["drift"]},
        "curves": curves,
        "timing": timing,
        "config": cfg.model_dump(mode="json"),
    }
    (out_dir / "bon.json").write_text(json.dumps(_finite(result), indent=1))
    write_bon_report(result, out_dir)
    log.info("best-of-n: %d curves in %.0fs -> %s", len(curves), timing["time_s/total"], out_dir)
    return result


# -- plots and page ------------------------------------------------------------------------------

def _plots(result: dict, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from services.driver.report import COLORS, save_figure

    curves = result["curves"]
    aggs = result["settings"]["aggregations"]
    style = {"noisy": ("-", "o", "full"), "clean": ("--", "s", "none")}

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for (name, c) in curves.items():
        ens, a = name.split("/")
        ls, mk, fill = style[ens]
        col = COLORS[aggs.index(a) % len(COLORS)]
        ax.plot(c["kl"], c["gold"], mk, color=col, fillstyle=fill, ms=4, alpha=0.8)
        if "alpha" in c["fit"]:
            d = np.linspace(0.0, math.sqrt(max(c["kl"])), 100)
            ax.plot(d**2, c["gold"][0] + bon_form(d, c["fit"]["alpha"], c["fit"]["beta"]), ls, color=col,
                    label=f"{a}, {ens} (fit R^2 {c['fit']['r2']:.2f})")
        else:
            ax.plot(c["kl"], c["gold"], ls, color=col, label=f"{a}, {ens}")
    ax.set_xlabel("KL_bon(n) = log n - (n-1)/n, nats")
    ax.set_ylabel("gold reward R* of the best of n")
    ax.set_title("best-of-n gold vs KL (solid: noisy labels, dashed: clean; lines: Gao et al. fit)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    gold_png = save_figure(fig, out_dir / "bon_gold.png")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharex=True)
    for (name, c) in curves.items():
        ens, a = name.split("/")
        ls, mk, fill = style[ens]
        col = COLORS[aggs.index(a) % len(COLORS)]
        axes[0].plot(c["kl"], c["proxy"], ls + mk, color=col, fillstyle=fill, ms=3, label=f"{a}, {ens}")
        axes[1].plot(c["kl"], c["proxy_member_mean"], ls + mk, color=col, fillstyle=fill, ms=3, label=f"{a}, {ens}")
    axes[0].set_title("proxy: the aggregate used for selection", fontsize=9)
    axes[1].set_title("proxy: member mean of the selected sample", fontsize=9)
    for ax in axes:
        ax.set_xlabel("KL_bon(n), nats")
        ax.set_ylabel("proxy reward (each ensemble's own scale)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return [gold_png, save_figure(fig, out_dir / "bon_proxy.png")]


def fmt_num(x, spec: str = ".3f") -> str:
    """A number for a table; '-' for None, inf and nan."""
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def fit_rows(result: dict) -> list[dict]:
    """One row per curve: the final values at n_max, the empirical best n and the fit (what the CLI and the page show)."""
    rows = []
    for name, c in result["curves"].items():
        f = c["fit"]
        best = int(np.argmax(c["gold"]))
        rows.append({"curve": name, "gold/n1": c["gold"][0], "gold/n_max": c["gold"][-1], "gold/best": c["gold"][best], "best_n": c["n"][best],
                     "proxy/n_max": c["proxy"][-1], "kl/n_max": c["kl"][-1], "fit/alpha": f.get("alpha"), "fit/beta": f.get("beta"),
                     "fit/r2": f.get("r2"), "fit/peak_d": f.get("peak_d"), "fit/peak_kl": f.get("peak_kl")})
    return rows


def write_bon_report(result: dict, out_dir: Path) -> Path:
    """bon_gold.png, bon_proxy.png and report.html (plots embedded) in out_dir."""
    from services.driver.report import PAGE, img_tag

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = _plots(result, out_dir)
    rows = fit_rows(result)
    keys = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v if isinstance(v, str) else fmt_num(v, 'd' if isinstance(v, int) else '.3f'))}</td>"
                                    for v in r.values()) + "</tr>" for r in rows)
    st = result["settings"]
    intro = (f"<p>{st['n_prompts']} held-out prompts x {st['n_max']} samples from the initial policy ({st['runtime/engine']}); "
             f"UWO lambda {st['uwo_lambda']}; label noise {html.escape(json.dumps(st['label_noise']))}. Gold at n = 1 is the mean gold "
             f"of all samples; fit: Gao et al. R(d) = d (alpha - beta d) on gold recentred at n = 1, peak d* = alpha / (2 beta), "
             f"peak KL = d*^2 (- : no finite peak).</p>")
    page = out_dir / "report.html"
    page.write_text(PAGE.format(title=f"tether best-of-n: {html.escape(st['name'])}",
                                body=intro + f"<table><tr>{head}</tr>{body}</table>" + "".join(img_tag(p) for p in plots)
                                + f"<h2>samples</h2><pre>{html.escape(json.dumps(result['samples'], indent=1))}</pre>"))
    return page
