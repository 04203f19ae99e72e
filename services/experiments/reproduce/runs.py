"""Reading the reproduction's run folders: each finished sweep cell's evaluations (samples paired with metrics rows)
as a RunCurve (learner.analysis.claims), a damaged folder left out and named rather than fatal."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np

from learner.analysis import claims as C
from services.experiments.sweep.spec import read_json

log = logging.getLogger(__name__)


def load_runs(sweep_dir: Path, method: str, *, max_step: int | None = None) -> list[C.RunCurve]:
    """The finished cells of ``method`` in a sweep folder as RunCurves (seed order), their evaluations up to
    iteration ``max_step``. Each evaluation's samples file pairs with its metrics row in log order."""
    from services.state.runlog import run_state

    meta = read_json(Path(sweep_dir) / "cells.json")
    out = []
    for c in sorted((c for c in meta.get("cells", []) if c["method"] == method), key=lambda c: c["seed"]):
        d = Path(sweep_dir) / c["dir"]
        if run_state(d) != "finished":
            continue
        try:
            out.append(read_run(d, name=f"{method}/seed-{c['seed']}", seed=c["seed"], max_step=max_step))
        except (ValueError, OSError, KeyError, TypeError) as e:  # one damaged run folder must not lose every other claim
            why = f"{type(e).__name__}: {e}"
            if UNREADABLE.get(str(d)) != why:
                log.warning("skipped the run %s: %s", d, why)
            UNREADABLE[str(d)] = why
    return out


# run folder -> why it could not be read, for the runs load_runs skipped (write_claims lists them in claims.md)
UNREADABLE: dict[str, str] = {}


def read_run(run_dir: Path, *, name: str, seed: int, max_step: int | None = None) -> C.RunCurve:
    from services.state.runlog import evaluations

    steps, kl, gold, proxy, before, extra = [], [], [], [], [], {"ppl_under_init": [], "toxic_frac": []}
    prompts0: list[str] | None = None
    texts: list[str] = []
    for step, r, lines in evaluations(run_dir, max_step=max_step):
        prompts = [x["prompt"] for x in lines]
        if prompts0 is None:
            prompts0 = prompts
        elif prompts != prompts0:
            raise ValueError(f"{run_dir}: the prompts of the evaluation at iteration {step} differ from the run's first evaluation; "
                             "evaluations must share prompts")
        steps.append(step)
        kl.append(float(r.get("eval/kl_from_init_k3", math.nan)))
        gold.append([float(x["gold"]) for x in lines])
        proxy.append([float(x["proxy"]) for x in lines])
        before.append(bool(r.get("eval/before_reset")))
        extra["ppl_under_init"].append(float(r.get("eval/ppl_under_init", math.nan)))
        extra["toxic_frac"].append(float(r.get("eval/toxic_frac", math.nan)))
        texts = [x["response"] for x in lines]
    if prompts0 is None:
        raise ValueError(f"{run_dir}: no evaluations")
    index: dict[str, int] = {}
    groups = [index.setdefault(p, len(index)) for p in prompts0]
    return C.RunCurve(name, seed, np.array(steps), np.array(kl), np.array(gold), np.array(proxy), np.array(groups),
                      np.array(before), {k: np.array(v) for k, v in extra.items()}, texts)



def ppo_ensemble_arms(dirs: dict[str, Path], stage: str) -> tuple[dict[str, list[C.RunCurve]], int]:
    """The PPO ensemble stage's arms (single, mean, wco, uwo) and its horizon (the last iteration its runs reached).
    The 25%-noise stage borrows its mean arm from the overopt sweep's KL-0 arm (the default proxies, read to the
    horizon); the clean stage runs its own."""
    ens = {a: load_runs(dirs[stage], a) for a in ("single", "wco", "uwo")}
    horizon = max((int(r.steps[-1]) for rs in ens.values() for r in rs), default=30)
    mean = load_runs(dirs["overopt"], "ppo_kl0", max_step=horizon) if stage == "ensembles" else load_runs(dirs[stage], "mean")
    return {"single": ens["single"], "mean": mean, "wco": ens["wco"], "uwo": ens["uwo"]}, horizon

