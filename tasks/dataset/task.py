"""The dataset task behind the task contract (tasks/contract.py).

Stages (each keyed by the config that builds it, in the shared store, tasks/store.py):
  prompts  <- task (data, held-out fraction, seed), policy.name_or_path, generation.max_new_tokens   (train / held-out jsonl)
  proxy    <- prompts, policy, gold scorer, proxy, generation      (only proxy.source synthetic or preferences)
The policy and the scorers are the user's: loaded with from_pretrained, imported or called, never built here.
"""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

from tasks import store
from tasks.contract import PromptSet, TaskPaths


def _fingerprint(path: str | None) -> str | None:
    """A local folder's tokenizer and config contents (a changed model changes the key); a hub name as it is."""
    if not path or not Path(path).is_dir():
        return path
    h = hashlib.sha256()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        f = Path(path) / name
        if f.exists():
            h.update(name.encode() + f.read_bytes())
    return h.hexdigest()[:16]


def _data_fingerprint(path: str) -> str:
    """A local file's size and modification time, a datasets folder's state files: an edited dataset is read again."""
    p = Path(path)
    if p.is_file():
        st = p.stat()
        return f"{st.st_size}-{int(st.st_mtime)}"
    if p.is_dir():
        return "-".join(f"{f.name}:{f.stat().st_size}:{int(f.stat().st_mtime)}" for f in sorted(p.rglob("*")) if f.is_file())[:2000]
    return path


class DatasetTask:
    name = "dataset"

    def __init__(self, cfg):
        self.cfg = cfg
        self._prompts: dict[str, list[dict]] = {}
        self._tok = None  # the policy tokenizer, loaded on first use (render_prompt)

    # -- stages ------------------------------------------------------------------------------------
    def _parts(self, stage: str) -> dict:
        cfg = self.cfg
        d = cfg.task.data
        prompts = {"data": d.model_dump(), "files": [_data_fingerprint(d.path)] + ([_data_fingerprint(d.heldout_path)] if d.heldout_path else []),
                   "heldout_fraction": cfg.task.heldout_fraction, "seed": cfg.task.seed, "policy": cfg.policy.name_or_path,
                   "tokenizer": _fingerprint(cfg.policy.name_or_path), "max_new_tokens": cfg.generation.max_new_tokens}
        if stage == "prompts":
            return prompts
        if stage == "dataset_proxy":
            p = cfg.proxy
            extra = {"preferences": p.preferences.model_dump(), "files": _data_fingerprint(p.preferences.path)} if p.source == "preferences" \
                else {"gold": cfg.gold.scorer_spec().model_dump(), "generation": cfg.generation.model_dump(exclude={"n_per_prompt"})}
            return {"prompts": prompts, "policy_files": _fingerprint(cfg.policy.name_or_path),
                    "proxy": p.model_dump(exclude={"scorers"}), **extra}
        raise KeyError(stage)

    def folder(self, stage: str) -> tuple[Path, str]:
        key = store.stage_key(stage, self._parts(stage))
        return Path(self.cfg.data_dir) / "dataset" / f"{stage}-{key}", key

    def _required(self, stage: str) -> list[str]:
        if stage == "prompts":
            return ["train.jsonl", "heldout.jsonl"]
        return [f"member-{i}/model.safetensors" for i in range(self.cfg.proxy.n_members)]

    def _check(self, stage: str, cfg_source: str) -> Path:
        f, k = self.folder(stage)
        store.check_artefact(f, stage, k, self._required(stage), f"tether prepare {cfg_source}")
        return f

    def _build(self, stage: str, rebuild: bool, build) -> dict:
        folder, key = self.folder(stage)
        return store.build_stage(folder, stage, key, self._parts(stage), self._required(stage), build, rebuild=rebuild, index_dir=folder.parent)

    def prepare(self, *, rebuild: bool = False, cfg_source: str = "<config>") -> dict:
        from tasks.dataset.prompts import build_prompts

        out = {"policy": {"stage": "policy", "source": self.cfg.policy.name_or_path, "note": "loaded from_pretrained; not built here"}}
        out["prompts"] = self._build("prompts", rebuild, lambda tmp: build_prompts(self.cfg, tmp))
        out["gold"] = {"stage": "gold", "source": self.cfg.gold.scorer_spec().display, "note": "a scorer used as it is; not built here"}
        src = self.cfg.proxy.source
        if src == "synthetic":
            from tasks.dataset.proxies import build_synthetic

            out["proxy"] = self._build("dataset_proxy", rebuild, lambda tmp: build_synthetic(
                self.cfg, self._rows("train"), self._rows("heldout"), tmp))
        elif src == "preferences":
            from tasks.dataset.proxies import build_from_preferences

            out["proxy"] = self._build("dataset_proxy", rebuild, lambda tmp: build_from_preferences(self.cfg, self.render_prompt, tmp))
        return out

    def render_prompt(self, prompt, row: int) -> str:
        """A preference file's prompt as the policy sees it (the same rendering as the task's prompts)."""
        from transformers import AutoTokenizer

        from tasks.dataset.prompts import render

        if self._tok is None:
            self._tok = AutoTokenizer.from_pretrained(str(self.cfg.policy.name_or_path))
        return render(prompt, self._tok, self.cfg, row=row)[0]

    def resolve(self, *, cfg_source: str = "<config>") -> TaskPaths:
        cfg = self.cfg
        self._check("prompts", cfg_source)
        if cfg.proxy.source == "scorers":
            proxies = [s.model_dump() for s in cfg.proxy.scorers]
        else:
            f = self._check("dataset_proxy", cfg_source)
            proxies = [f / f"member-{i}" for i in range(cfg.proxy.n_members)]
        pol = cfg.policy.name_or_path
        return TaskPaths(pol, cfg.gold.scorer_spec().model_dump(), proxies, base_policy=pol)

    # -- prompts -----------------------------------------------------------------------------------
    def _rows(self, split: str) -> list[dict]:
        if split not in self._prompts:
            from tasks.dataset.prompts import read_prompts

            self._prompts[split] = read_prompts(self._check("prompts", "<config>"), split)
        return self._prompts[split]

    def prompts(self, split: str, n: int, *, seed: int) -> PromptSet:
        """n prompts of ``split`` drawn with replacement by ``seed`` (as the imdb task draws review prefixes)."""
        rows = self._rows(split)
        rng = random.Random(seed)
        pick = [rows[rng.randrange(len(rows))] for _ in range(n)]
        return PromptSet([r["text"] for r in pick], [list(r["ids"]) for r in pick], [dict(r["meta"]) for r in pick])

    def start_policy(self, paths: TaskPaths, run_dir: Path) -> TaskPaths:
        return paths
