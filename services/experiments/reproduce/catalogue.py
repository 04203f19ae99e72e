"""The catalogue of claims: which claims each stage's runs measure. The sweep stages' claims are data,
configs/reproduce/claims.yaml (its header describes the fields), read and checked here (``load_catalogue``: a
``CatalogueError`` names the stage, the claim and the field); ``sweep_claims`` reads each stage's arms from the run
folders and builds its claims. The best-of-n stage's claims (``bon_claims``), measured on its one samples file, are here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from learner.config import ConfigError
from services.experiments.reproduce.claims import OF, STATS, Claim, RLForm, _need, measured_parts, statistic
from services.experiments.reproduce.runs import RunReader
from services.experiments.reproduce.stages import BON_ARGS, SPEC_DIR, STAGE_NAMES, STAGES
from services.state.runlog import read_json

CATALOGUE = SPEC_DIR / "claims.yaml"
SWEEP_STAGES = tuple(s.name for s in STAGES if s.spec is not None)
HORIZON_DEFAULT = 30  # {horizon} when none of its arms has run


class CatalogueError(ConfigError):
    """configs/reproduce/claims.yaml cannot be used: the message names the stage, the claim and the field."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ArmSpec(_Spec):
    method: str  # a method of the stage's sweep spec
    stage: str | None = None  # None: the stage the arm is declared in
    to_horizon: bool = False  # read up to the stage's {horizon} only


class ClaimSpec(_Spec):
    claim: str
    measure: str
    arms: list[str]
    stat: Literal["fall", "rl_r2", "rl_peak_log_ratio", "gap", "diff", "loss_at_kl"]
    of: str | None = None
    threshold: float = 0.0
    direction: Literal["above", "below"] = "above"
    margin: float | None = None
    prompts: bool = True
    parts: Literal["overopt", "rl"] | None = None
    need: list[str] | None = None
    need_stage: str | None = None
    each: list[dict[str, str]] | None = None

    def resolved(self, names: dict) -> ClaimSpec:
        """This claim with ``names`` put into its texts and arm names (``each`` spent)."""
        def f(text: str) -> str:
            try:
                return text.format_map(names)
            except (KeyError, IndexError, ValueError) as e:
                raise ValueError(f"{text!r}: {type(e).__name__} {e} (the names defined here: {', '.join(names)})") from None

        return self.model_copy(update={"claim": f(self.claim), "measure": f(self.measure), "arms": [f(a) for a in self.arms],
                                       "need": [f(a) for a in self.need] if self.need is not None else None,
                                       "need_stage": f(self.need_stage) if self.need_stage is not None else None, "each": None})


class StageClaims(_Spec):
    paper: str
    vars: dict[str, str] = {}
    each: list[dict[str, str]] | None = None
    arms: dict[str, str | ArmSpec]
    horizon: list[str] = []
    claims: list[ClaimSpec]

    def arm(self, name: str, stage: str) -> ArmSpec:
        a = self.arms[name]
        return ArmSpec(method=a, stage=stage) if isinstance(a, str) else a.model_copy(update={"stage": a.stage or stage})

    def expand(self, horizon: int) -> list[ClaimSpec]:
        """The stage's claims in order: the list once per group ``each`` entry, a claim once per its own ``each`` entry."""
        return [c.resolved({**self.vars, **g, **e, "horizon": horizon})
                for g in (self.each or [{}]) for c in self.claims for e in (c.each or [{}])]


class Catalogue(RootModel[dict[str, StageClaims]]):
    """Sweep stage -> its claims, in the order they are measured and listed."""


def _where(raw, loc: tuple) -> str:
    """A pydantic error's location, with the claim's text beside its number."""
    out = ".".join(str(p) for p in loc)
    if len(loc) >= 3 and loc[1] == "claims" and isinstance(loc[2], int):
        try:
            out += f" (claim {raw[loc[0]]['claims'][loc[2]].get('claim')!r})"
        except (KeyError, IndexError, TypeError, AttributeError):
            pass
    return out


def load_catalogue(path: Path = CATALOGUE) -> Catalogue:
    """Read and check the catalogue: its fields (pydantic), then that every stage, arm, statistic and name it uses exists."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise CatalogueError(f"{path}: cannot be read: {e}") from None
    try:
        cat = Catalogue.model_validate(raw)
    except ValidationError as e:
        lines = [f"  - {_where(raw, x['loc'])}: {x['msg']}" + (f" (got {x['input']!r})" if x["type"] == "literal_error" else "")
                 for x in e.errors()]
        raise CatalogueError(f"invalid claims catalogue ({path}):\n" + "\n".join(lines)) from None
    problems = [f"  - {p}" for stage, sc in cat.root.items() for p in _problems(stage, sc)]
    if problems:
        raise CatalogueError(f"invalid claims catalogue ({path}):\n" + "\n".join(problems))
    return cat


def _problems(stage: str, sc: StageClaims) -> list[str]:
    if stage not in SWEEP_STAGES:
        return [f"{stage}: not a sweep stage; the sweep stages: {', '.join(SWEEP_STAGES)}"]
    out = []
    for name in sc.arms:
        a = sc.arm(name, stage)
        if a.stage not in SWEEP_STAGES:
            out.append(f"{stage}.arms.{name}.stage: {a.stage!r} is not a sweep stage; the sweep stages: {', '.join(SWEEP_STAGES)}")
        if a.to_horizon and not sc.horizon:
            out.append(f"{stage}.arms.{name}.to_horizon: the stage has no `horizon` arms to measure it by")
    for name in sc.horizon:
        if name not in sc.arms or sc.arm(name, stage).to_horizon:
            out.append(f"{stage}.horizon: {name!r} is not one of the stage's arms read in full ({', '.join(sc.arms)})")
    try:
        claims = sc.expand(0)
    except ValueError as e:
        return out + [f"{stage}.claims: {e}"]
    for i, c in enumerate(claims):
        where = f"{stage}, claim {i + 1} ({c.claim!r})"
        for field, names in (("arms", c.arms), ("need", c.need or [])):
            out += [f"{where}.{field}: {a!r} is not one of the stage's arms ({', '.join(sc.arms)})" for a in names if a not in sc.arms]
        if len(c.arms) != STATS[c.stat]:
            out.append(f"{where}.arms: the statistic {c.stat} takes {STATS[c.stat]} arm(s), got {len(c.arms)}")
        if c.stat in OF and c.of not in OF[c.stat]:
            out.append(f"{where}.of: {c.stat} measures one of {', '.join(OF[c.stat])}, got {c.of!r}")
        elif c.stat not in OF and c.of is not None:
            out.append(f"{where}.of: the statistic {c.stat} takes no `of`")
        if c.need_stage is not None and c.need_stage not in STAGE_NAMES:
            out.append(f"{where}.need_stage: {c.need_stage!r} is not a stage; the stages: {', '.join(STAGE_NAMES)}")
    return out


def read_arms(stage: str, sc: StageClaims, dirs: dict[str, Path], reader: RunReader) -> tuple[dict[str, list], int]:
    """The stage's arms as RunCurves (read in their order, a ``to_horizon`` arm after the others) and its horizon."""
    arms = {}
    for name in sc.arms:
        a = sc.arm(name, stage)
        if not a.to_horizon:
            arms[name] = reader.runs(dirs[a.stage], a.method)
    horizon = max((int(r.steps[-1]) for name in sc.horizon for r in arms[name]), default=HORIZON_DEFAULT)
    for name in sc.arms:
        a = sc.arm(name, stage)
        if a.to_horizon:
            arms[name] = reader.runs(dirs[a.stage], a.method, max_step=horizon)
    return {name: arms[name] for name in sc.arms}, horizon


def sweep_claims(dirs: dict[str, Path], reader: RunReader | None = None, catalogue: Catalogue | None = None) -> list[Claim]:
    """The sweep stages' claims on what has run, stage by stage as the catalogue lists them; ``reader`` reads the runs
    and keeps those that could not be read (a claim short of seeds counts those found by its stage's turn)."""
    cat = catalogue or load_catalogue()
    reader = reader if reader is not None else RunReader()
    out: list[Claim] = []
    for stage, sc in cat.root.items():
        arms, horizon = read_arms(stage, sc, dirs, reader)
        forms: dict[str, RLForm] = {}  # arm -> its RL-form fit, shared by the stage's claims on it
        for c in sc.expand(horizon):
            form = None
            if c.stat.startswith("rl_") or c.parts == "rl":
                form = forms.setdefault(c.arms[0], RLForm(c.arms[0], arms[c.arms[0]]))
            out.append(Claim(sc.paper, c.claim, c.measure, {a: arms[a] for a in c.arms}, statistic(c.stat, c.arms, c.of, rl=form),
                             c.threshold, direction=c.direction, margin=c.margin, prompts=c.prompts,
                             missing=_need({a: arms[a] for a in (c.need or c.arms)}, c.need_stage or stage, len(reader.unreadable)),
                             parts=measured_parts(c.parts, c.arms[0], rl=form) if c.parts else None))
    return out


def ppo_ensemble_arms(dirs: dict[str, Path], stage: str, reader: RunReader | None = None,
                      catalogue: Catalogue | None = None) -> tuple[dict[str, list], int]:
    """The PPO ensemble stage's arms (single, mean, wco, uwo) and its horizon (the last iteration its runs reached), as
    the catalogue reads them: the 25%-noise stage borrows its mean arm from the overopt sweep's KL-0 arm (the default
    proxies, read to the horizon); the clean stage runs its own."""
    cat = catalogue or load_catalogue()
    arms, horizon = read_arms(stage, cat.root[stage], dirs, reader if reader is not None else RunReader())
    return {a: arms[a] for a in ("single", "mean", "wco", "uwo")}, horizon


def bon_claims(bon_dir: Path) -> list[Claim]:
    """The best-of-n stage's claims, measured on its samples file (each prompt's gold and every proxy member's score)."""
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

