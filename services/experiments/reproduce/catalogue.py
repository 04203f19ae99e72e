"""The catalogue of claims: for each stage, the runs of its arms and the claims measured on them."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from learner.analysis import claims as C
from services.experiments.reproduce.claims import (Claim, _diff, _gap, _LossAtKL, _need, _overopt_parts, _rl_parts, _rl_peak_log_ratio,
                                                   _rl_r2, _fall)
from services.experiments.reproduce.runs import load_runs, ppo_ensemble_arms
from services.experiments.reproduce.stages import BON_ARGS
from services.experiments.sweep.spec import read_json


def sweep_claims(dirs: dict[str, Path]) -> list[Claim]:
    out: list[Claim] = []
    ov = {"kl0": load_runs(dirs["overopt"], "ppo_kl0"), "kl001": load_runs(dirs["overopt"], "ppo_kl001")}
    miss = _need(ov, "overopt")
    gao = "Gao et al. 2022"
    out += [
        Claim(gao, "PPO with no KL penalty over-optimises the proxy", "fall of held-out gold after its peak, as a fraction of its gain "
              "(peak of the 3-point moving average; final = mean of the last 3 evaluations; mean over seeds)", {"kl0": ov["kl0"]}, lambda s: C.arm_mean(s["kl0"], _fall), 0.3, missing=_need({"kl0": ov["kl0"]}, "overopt"),
              parts=_overopt_parts("kl0")),
        Claim(gao, "PPO with KL 0.01 over-optimises the proxy", "as above, KL coefficient 0.01", {"kl001": ov["kl001"]},
              lambda s: C.arm_mean(s["kl001"], _fall), 0.3, missing=_need({"kl001": ov["kl001"]}, "overopt"), parts=_overopt_parts("kl001")),
        Claim(gao, "the RL form R(d) = d(alpha - beta log d) fits PPO's gold vs KL", "R^2 of the fit pooled over seeds (KL 0)",
              {"kl0": ov["kl0"]}, _rl_r2("kl0"), 0.9, missing=miss, parts=_rl_parts("kl0")),
        Claim(gao, "the RL form predicts where gold peaks", "log(predicted peak KL / observed peak KL), KL 0; within a factor 1.5",
              {"kl0": ov["kl0"]}, _rl_peak_log_ratio("kl0"), margin=math.log(1.5), missing=miss, parts=_rl_parts("kl0")),
    ]
    er = {"er": load_runs(dirs["elastic_reset"], "elastic_reset"), "kl005": load_runs(dirs["elastic_reset"], "ppo_kl005"),
          "kl001": ov["kl001"]}
    noukh = "Noukhovitch et al. 2023"
    for base, label in (("kl001", "0.01 (the same penalty, no resets)"), ("kl005", "0.05")):
        arms = {"er": er["er"], base: er[base]}
        m = _need(arms, "elastic_reset" if base == "kl005" else "overopt")
        out.append(Claim(noukh, f"Elastic Reset: higher gold than PPO + KL {label} at equal KL from pi_0",
                         "mean gold frontier (best gold at KL <= k) over k from 0 to the smallest largest-KL of the runs, ER minus PPO",
                         arms, _gap("er", base, "gold"), missing=m))
        out.append(Claim(noukh, f"Elastic Reset: higher proxy reward than PPO + KL {label} at equal KL", "as above, the proxy",
                         arms, _gap("er", base, "proxy"), missing=m))
    coste = "Coste et al. 2023"
    for stage, label in (("ensembles", "25% label noise"), ("ensembles_clean", "clean labels")):
        ens, horizon = ppo_ensemble_arms(dirs, stage)
        for cons in ("wco", "uwo"):
            for base in ("single", "mean"):
                arms = {base: ens[base], cons: ens[cons]}
                out.append(Claim(coste, f"PPO (KL 0, {label}): {cons.upper()} loses less gold after the peak than "
                                 f"{'a single proxy' if base == 'single' else 'the ensemble mean'}",
                                 f"gold lost after the peak (smoothed peak - mean of the last 3 evaluations, to iteration {horizon}): "
                                 f"{base} minus {cons.upper()}", arms,
                                 _diff(base, cons, lambda v: C.loss_after_peak(v.gold)), missing=_need(arms, stage)))
        # Secondary, added after the rows above had been measured (session 21): by a fixed iteration an arm that climbs
        # slower has had less time to fall (the clean single proxy peaks about 6 iterations after the ensembles), so the
        # same loss is also measured up to a common KL from pi_0. The rows above are kept as first specified.
        for cons in ("wco", "uwo"):
            for base in ("single", "mean"):
                arms = {base: ens[base], cons: ens[cons]}
                out.append(Claim(coste, f"PPO (KL 0, {label}): {cons.upper()} loses less gold after the peak than "
                                 f"{'a single proxy' if base == 'single' else 'the ensemble mean'}, at equal KL from pi_0",
                                 "secondary measure, added after the row above it had been measured: gold lost after the peak "
                                 "(on the 3-point moving average: its peak minus its value at KL k) up to the largest KL from pi_0 k that every run of both "
                                 f"arms reached, {base} minus {cons.upper()}", arms, _LossAtKL(base, cons), missing=_need(arms, stage)))
    fd = {a: load_runs(dirs["fdpg"], a) for a in ("js", "forward_kl", "reverse_kl")}
    go = "Go et al. 2023"
    out += [
        Claim(go, "f-DPG: Jensen-Shannon reaches higher gold than forward KL", "final gold (mean of the last 3 evaluations), JS minus forward KL",
              {"js": fd["js"], "forward_kl": fd["forward_kl"]}, _diff("js", "forward_kl", lambda v: C.final(v.gold)),
              missing=_need({"js": fd["js"], "forward_kl": fd["forward_kl"]}, "fdpg")),
        Claim(go, "f-DPG: reverse KL (mode-seeking) aligns more with the target's reward than forward KL",
              "final proxy reward, reverse minus forward KL", {"reverse_kl": fd["reverse_kl"], "forward_kl": fd["forward_kl"]},
              _diff("reverse_kl", "forward_kl", lambda v: C.final(v.proxy)), missing=_need({"reverse_kl": fd["reverse_kl"], "forward_kl": fd["forward_kl"]}, "fdpg")),
        Claim(go, "f-DPG: forward KL (mass-covering) keeps more diversity than reverse KL",
              "distinct-2 of the last evaluation's samples, forward minus reverse KL (seeds resampled)",
              {"forward_kl": fd["forward_kl"], "reverse_kl": fd["reverse_kl"]},
              _diff("forward_kl", "reverse_kl", lambda v: C.distinct_n(v.run.texts, 2)), prompts=False,
              missing=_need({"reverse_kl": fd["reverse_kl"], "forward_kl": fd["forward_kl"]}, "fdpg")),
    ]
    qk = {"quark": load_runs(dirs["quark"], "quark"), "ppo": load_runs(dirs["quark"], "ppo_kl")}
    m = _need(qk, "quark")
    lu = "Lu et al. 2022"
    out += [
        Claim(lu, "Quark: less toxic than PPO + KL", "final non-toxicity reward log((1-p)/p) of alt-profanity-check, Quark minus PPO",
              qk, _diff("quark", "ppo", lambda v: C.final(v.gold)), missing=m),
        Claim(lu, "Quark: at similar fluency", "final log perplexity under pi_0, Quark minus PPO; similar = within +-0.1 nats (10%)",
              qk, _diff("quark", "ppo", lambda v: math.log(C.final(v.run.extra["ppl_under_init"]))), margin=0.1, missing=m),
    ]
    sa = {"salsa": load_runs(dirs["salsa"], "salsa"), "sft": load_runs(dirs["salsa"], "sft_ref")}
    m = _need(sa, "salsa")
    ch = "Chegini et al. 2024"
    out += [
        Claim(ch, "SALSA: higher gold than its one-SFT-model baseline at equal KL from pi_0",
              "mean gold frontier over KL from pi_0 (as for Elastic Reset), SALSA minus baseline", sa, _gap("salsa", "sft", "gold"), missing=m),
        Claim(ch, "SALSA: higher proxy reward than its baseline at equal KL from pi_0", "as above, the proxy", sa,
              _gap("salsa", "sft", "proxy"), missing=m),
    ]
    return out


def bon_claims(bon_dir: Path) -> list[Claim]:
    from learner.analysis.best_of_n import bon_gold_per_prompt, bon_ns
    from learner.analysis.scaling_laws import fit_bon_curve

    coste, gao = "Coste et al. 2023", "Gao et al. 2022"
    path = Path(bon_dir) / "samples.npz"
    names = [("noisy", "25% label noise"), ("clean", "clean labels")]
    if not path.is_file():
        why = "no best-of-n samples: run `tether reproduce --only bon`"
        return ([Claim(gao, "the best-of-n form fits best-of-n gold vs KL (single noisy proxy)", "", {}, None, missing=why)]
                + [Claim(coste, f"best-of-n ({lab}): {c.upper()} picks higher gold than {b}", "", {}, None, missing=why)
                   for _, lab in names for c in ("wco", "uwo") for b in ("a single proxy", "the ensemble mean")])
    z = np.load(path)
    meta = read_json(Path(bon_dir) / "bon.json").get("settings", {})
    n_best = int(meta.get("n_best") or meta.get("n_max") or BON_ARGS["n_best"])
    lam = float(meta.get("uwo_lambda", BON_ARGS["uwo_lambda"]))
    ns = bon_ns(n_best)
    gold = z["gold"]
    kl = np.log(np.asarray(ns, dtype=np.float64)) - (np.asarray(ns) - 1) / np.asarray(ns)
    out: list[Claim] = []
    for key, lab in names:
        if f"proxy_{key}" not in z.files:
            out += [Claim(coste, f"best-of-n ({lab}): {c.upper()} picks higher gold than {b}", "", {}, None,
                          missing=f"the best-of-n samples have no {key} ensemble's scores") for c in ("wco", "uwo") for b in ("a single proxy", "the ensemble mean")]
            continue
        members = z[f"proxy_{key}"]
        arrays = {"single": bon_gold_per_prompt(members[:, :, :1], gold, ns, aggregation="mean", uwo_lambda=lam)}
        for agg in ("mean", "wco", "uwo"):
            arrays[agg] = bon_gold_per_prompt(members, gold, ns, aggregation=agg, uwo_lambda=lam)
        if key == "noisy":
            def r2(s, k="single"):
                f = fit_bon_curve(kl, s[k].mean(axis=0))
                if "error" in f:
                    raise ValueError(f["error"])
                return f["r2"]

            def beta(s, k="single"):
                f = fit_bon_curve(kl, s[k].mean(axis=0))
                if "error" in f:
                    raise ValueError(f["error"])
                return f["beta"]
            out.append(Claim(gao, "the best-of-n form R(d) = d(alpha - beta d) fits best-of-n gold vs KL (single noisy proxy)",
                             f"R^2 of the fit to n = 1..{n_best} (prompts resampled)", {"single": arrays["single"]}, r2, 0.9, paired=True))
            out.append(Claim(gao, "best-of-n over-optimises the single noisy proxy: the form's curvature beta > 0",
                             "fitted beta (prompts resampled)", {"single": arrays["single"]}, beta, 0.0, paired=True))
        for cons in ("wco", "uwo"):
            for base, bl in (("single", "a single proxy"), ("mean", "the ensemble mean")):
                out.append(Claim(coste, f"best-of-n ({lab}): {cons.upper()} picks higher gold than {bl}",
                                 f"gold of best-of-{n_best}, {cons.upper()} minus {base} (the same samples; prompts resampled)",
                                 {base: arrays[base], cons: arrays[cons]},
                                 (lambda s, a=cons, b=base: float(s[a][:, -1].mean() - s[b][:, -1].mean())), paired=True,
                                 parts=(lambda s, a=cons, b=base: {f"{a} gold": s[a][:, -1].mean(), f"{b} gold": s[b][:, -1].mean(),
                                                                    "gold at n = 1": s[b][:, 0].mean()})))
    return out

