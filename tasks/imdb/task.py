"""The imdb task behind the task contract (tasks/contract.py): tasks/imdb/build.py builds and resolves, prompts are review prefixes."""
from __future__ import annotations

from pathlib import Path

from tasks.contract import PromptSet, TaskPaths


class ImdbTask:
    name = "imdb"

    def __init__(self, cfg):
        self.cfg = cfg
        self._split = None

    def prepare(self, *, rebuild: bool = False, cfg_source: str = "<config>") -> dict:
        from tasks.imdb.build import prepare

        return prepare(self.cfg, rebuild=rebuild, cfg_source=cfg_source)

    def resolve(self, *, cfg_source: str = "<config>") -> TaskPaths:
        from tasks.imdb.build import resolve

        return resolve(self.cfg, cfg_source=cfg_source)

    @property
    def split(self):
        if self._split is None:
            from tasks.imdb.data import load_imdb

            self._split = load_imdb(self.cfg.task)
        return self._split

    def prompts(self, split: str, n: int, *, seed: int) -> PromptSet:
        from tasks.imdb.data import make_prompts

        texts = {"train": self.split.train_text, "heldout": self.split.heldout_text}[split]
        return PromptSet(make_prompts(texts, n, self.cfg.task, seed=seed))

    def start_policy(self, paths: TaskPaths, run_dir: Path) -> TaskPaths:
        """SALSA (reference.kind soup, Algorithm 1): the policy (and its value network) start from the soup itself."""
        if self.cfg.reference.kind != "soup":
            return paths
        import dataclasses

        from tasks.imdb.sft import write_soup

        return dataclasses.replace(paths, policy=write_soup(paths.reference, paths.reference_weights, Path(run_dir) / "soup-policy"))
