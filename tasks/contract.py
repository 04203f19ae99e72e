"""The task contract: what a task gives the run driver, best-of-n, sweeps, `tether reproduce`, the API and bench/.

A task (one class per name, registered in ``tasks.TASKS``) is built from the run's config and
  - ``prepare(rebuild=...)`` builds or reuses what it needs behind `tether prepare` (returns {stage: manifest});
  - ``resolve()`` returns the ``TaskPaths`` of ready artefacts (AssetError naming the prepare command when one is not);
  - ``prompts(split, n, seed=...)`` returns n seeded prompts of ``train`` or ``heldout`` as a ``PromptSet``;
  - ``start_policy(paths, run_dir)`` may replace the policy a run starts from (SALSA's weight soup; default unchanged).
Scorers are named in ``TaskPaths``: ``gold`` and each of ``proxies`` is a path or name (the task's own built models) or a
scorer config dict (learner/models/scorers.py). The gold is held out: only the gold role reads it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

# The held-out prompts a run evaluates on are task.prompts("heldout", n, seed=train.seed + HELDOUT_SEED_OFFSET): the driver's
# gold evaluation and `tether bon` draw the same ones (so BoN(1) ~ eval/gold_mean at step 0).
HELDOUT_SEED_OFFSET = 99991


@dataclass(frozen=True)
class TaskPaths:
    policy: Path | str  # the model the run starts from: pi_0, or an SFT model (reference.kind sft; the driver writes the soup for soup)
    gold: Path | str | dict  # a built judge's folder, a name, or a scorer config
    proxies: list  # each a reward-model folder, a name, or a scorer config
    reference: list[Path | str] = field(default_factory=list)  # models whose soup is the KL reference; empty = the start policy
    reference_weights: list[float] = field(default_factory=list)
    base_policy: Path | str | None = None  # pi_0 itself (what proxies were trained on)
    drift_policy: Path | str | None = None  # the common model drift is measured from (pi_0; the driver sets it); None = policy


@dataclass
class PromptSet:
    """Prompts for the rollout engines: ``texts`` (the rendered prompt each sample's text starts with), ``ids`` (their policy
    token ids, as the task encoded them; None = the engines' IMDB encoding of ``texts``) and ``meta`` (per prompt, what scorers
    get besides: the user's own prompt and its metadata columns; empty for the imdb task)."""

    texts: list[str]
    ids: list[list[int]] | None = None
    meta: list[dict] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)  # per row, the distinct prompt it repeats (repeat_each); empty = one each

    def __len__(self) -> int:
        return len(self.texts)

    def repeat_each(self, m: int) -> "PromptSet":
        """Every prompt m times in a row (generation.n_per_prompt, f-DPG's samples per prompt), each row's group its prompt's
        position. Each row is still sampled with its own seed (the engines seed each request by its index)."""
        rep = lambda xs: [x for x in xs for _ in range(m)]  # noqa: E731
        return PromptSet(rep(self.texts), None if self.ids is None else rep(self.ids), rep(self.meta) if self.meta else [],
                         rep(list(range(len(self.texts)))))


class Task(Protocol):
    name: str

    def prepare(self, *, rebuild: bool = False, cfg_source: str = "<config>") -> dict: ...

    def resolve(self, *, cfg_source: str = "<config>") -> TaskPaths: ...

    def prompts(self, split: str, n: int, *, seed: int) -> PromptSet: ...

    def start_policy(self, paths: TaskPaths, run_dir: Path) -> TaskPaths: ...
