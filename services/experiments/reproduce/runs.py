"""Reading the reproduction's run folders: each finished sweep cell's evaluations (samples paired with metrics rows)
as a RunCurve (learner.analysis.claims), a damaged folder left out and named rather than fatal."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learner.analysis import claims as C
from services.state.runlog import read_json

log = logging.getLogger(__name__)


@dataclass
class LoadedRuns:
    """A sweep folder's finished runs of one method, and those that could not be read (run folder -> why)."""

    runs: list[C.RunCurve]
    unreadable: dict[str, str] = field(default_factory=dict)


def load_runs(sweep_dir: Path, method: str, *, max_step: int | None = None) -> LoadedRuns:
    """The finished cells of ``method`` in a sweep folder as RunCurves (seed order), their evaluations up to
    iteration ``max_step``. Each evaluation's samples file pairs with its metrics row in log order. A run folder
    that cannot be read is left out and returned in ``unreadable`` (one damaged run must not lose every other claim)."""
    from services.state.runlog import run_state

    meta = read_json(Path(sweep_dir) / "cells.json")
    out = LoadedRuns([])
    for c in sorted((c for c in meta.get("cells", []) if c["method"] == method), key=lambda c: c["seed"]):
        d = Path(sweep_dir) / c["dir"]
        if run_state(d) != "finished":
            continue
        try:
            out.runs.append(read_run(d, name=f"{method}/seed-{c['seed']}", seed=c["seed"], max_step=max_step))
        except (ValueError, OSError, KeyError, TypeError) as e:
            out.unreadable[str(d)] = f"{type(e).__name__}: {e}"
    return out


class RunReader:
    """The runs of one report: each (sweep folder, method, max_step) read once, and ``unreadable``, every run folder
    that could not be read so far (folder -> why; write_claims lists them in claims.md), each warned about once."""

    def __init__(self) -> None:
        self.unreadable: dict[str, str] = {}
        self._read: dict[tuple, list[C.RunCurve]] = {}

    def runs(self, sweep_dir: Path, method: str, *, max_step: int | None = None) -> list[C.RunCurve]:
        key = (str(sweep_dir), method, max_step)
        if key not in self._read:
            got = load_runs(sweep_dir, method, max_step=max_step)
            for d, why in got.unreadable.items():
                if self.unreadable.get(d) != why:
                    log.warning("skipped the run %s: %s", d, why)
                self.unreadable[d] = why
            self._read[key] = got.runs
        return self._read[key]


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
