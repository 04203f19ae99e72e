"""Proxies of a dataset task that tether trains (tasks/reward_models.py): on synthetic gold labels (Gao et al., Coste et al.:
pairs of pi_0 responses to the task's prompts, labelled by the task's gold scorer with label_noise of them flipped), or on the
user's own preference pairs. Members read the rendered prompt + response, as the ensemble scores rollouts."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from learner.config import TetherConfig
from tasks.reward_models import new_member, pair_accuracy, train_member

log = logging.getLogger(__name__)


def sample_pairs(cfg: TetherConfig, prompts: list[dict], gold, *, n: int, seed: int) -> dict:
    """n pairs of pi_0 responses to n seeded prompts (drawn with replacement), with the gold's score of each."""
    from learner.models.engine import TransformersEngine

    rng = np.random.default_rng(seed)
    pick = [prompts[int(i)] for i in rng.integers(0, len(prompts), n)]
    engine = TransformersEngine.from_path(cfg.policy.name_or_path, cfg.generation)
    doubled = [p for p in pick for _ in range(2)]
    r = engine.generate([p["text"] for p in doubled], seed=seed, prompt_ids=[p["ids"] for p in doubled])
    g = gold.score_samples([p["meta"]["prompt"] for p in doubled], r.responses, [p["meta"] for p in doubled]).reshape(n, 2)
    full = [p["text"] + resp for p, resp in zip(doubled, r.responses)]
    return {"a": full[0::2], "b": full[1::2], "gold_a": g[:, 0], "gold_b": g[:, 1]}


def train_members(cfg: TetherConfig, chosen: list[str], rejected: list[str], evalp: dict, out_dir: Path) -> list[dict]:
    pc, members = cfg.proxy, []
    for k in range(pc.n_members):
        seed = cfg.task.seed * 1000 + k
        rm = new_member(cfg, cfg.policy.name_or_path, seed)
        t1 = time.time()
        losses = train_member(rm, chosen, rejected, cfg, seed, desc=f"proxy member {k + 1}/{pc.n_members}")
        acc = pair_accuracy(rm, evalp)
        rm.model.save_pretrained(str(out_dir / f"member-{k}"))
        rm.tok.save_pretrained(str(out_dir / f"member-{k}"))
        members.append({"seed": seed, "heldout_pair_acc_vs_gold": round(acc, 4), "final_loss": round(float(np.mean(losses[-20:])), 4),
                        "train_seconds": round(time.time() - t1, 1)})
        log.info("proxy member %d: held-out pair agreement %.3f", k, acc)
    return members


def build_synthetic(cfg: TetherConfig, train_prompts: list[dict], heldout_prompts: list[dict], out_dir: Path) -> dict:
    from learner.models.gold import load_gold

    pc = cfg.proxy
    t0 = time.time()
    gold = load_gold(cfg.gold.scorer_spec().model_dump())
    log.info("proxy: sampling %d training and %d held-out pairs from pi_0, labelled by the gold", pc.n_pairs, pc.n_eval_pairs)
    train = sample_pairs(cfg, train_prompts, gold, n=pc.n_pairs, seed=cfg.task.seed + 101)
    evalp = sample_pairs(cfg, heldout_prompts, gold, n=pc.n_eval_pairs, seed=cfg.task.seed + 202)
    sample_s = time.time() - t0
    pref_a = train["gold_a"] > train["gold_b"]
    flip = np.random.default_rng(cfg.task.seed + 303).random(pc.n_pairs) < pc.label_noise  # one shared noisy relabelling (Coste et al.)
    noisy = pref_a ^ flip
    chosen = [a if pa else b for a, b, pa in zip(train["a"], train["b"], noisy)]
    rejected = [b if pa else a for a, b, pa in zip(train["a"], train["b"], noisy)]
    (out_dir / "pairs_sample.json").write_text(json.dumps(
        [{"a": train["a"][i], "b": train["b"][i], "gold_a": float(train["gold_a"][i]), "gold_b": float(train["gold_b"][i]),
          "label_flipped": bool(flip[i])} for i in range(min(20, pc.n_pairs))], indent=1))
    members = train_members(cfg, chosen, rejected, evalp, out_dir)
    return {"source": "synthetic", "members": members, "n_train_pairs": pc.n_pairs, "n_eval_pairs": pc.n_eval_pairs,
            "label_noise": pc.label_noise, "flipped_fraction": round(float(flip.mean()), 4),
            "gold_ties": int(np.sum(train["gold_a"] == train["gold_b"])),
            "gold_margin_abs_mean": round(float(np.abs(train["gold_a"] - train["gold_b"]).mean()), 3), "sampling_seconds": round(sample_s, 1)}


def build_from_preferences(cfg: TetherConfig, render_prompt, out_dir: Path) -> dict:
    """Members trained on proxy.preferences; agreement is measured on a seeded held-out fraction of the pairs."""
    from tasks.dataset.data import load_rows, require_columns
    from tasks.store import AssetError

    pref = cfg.proxy.preferences
    ds = load_rows(pref.path, pref.split, field="proxy.preferences.path")
    keys = [k for k in (pref.prompt_key, pref.chosen_key, pref.rejected_key) if k]
    require_columns(ds, keys, source=repr(pref.path), field="proxy.preferences")
    a, b = [], []
    for i, row in enumerate(ds):
        c, r = row[pref.chosen_key], row[pref.rejected_key]
        if not isinstance(c, str) or not isinstance(r, str):
            raise AssetError(f"proxy.preferences: row {i} of {pref.path!r}: {pref.chosen_key!r} and {pref.rejected_key!r} must be strings")
        head = render_prompt(row[pref.prompt_key], i) if pref.prompt_key else ""
        a.append(head + c)
        b.append(head + r)
    if len(a) < 4:
        raise AssetError(f"proxy.preferences: {len(a)} pairs in {pref.path!r}; at least 4 are needed (training and held-out)")
    order = np.random.default_rng(cfg.task.seed + 404).permutation(len(a))
    n_held = max(1, int(round(len(a) * pref.heldout_fraction)))
    held, tr = order[:n_held], order[n_held:]
    evalp = {"a": [a[i] for i in held], "b": [b[i] for i in held], "gold_a": np.ones(n_held), "gold_b": np.zeros(n_held)}
    members = train_members(cfg, [a[i] for i in tr], [b[i] for i in tr], evalp, out_dir)
    for m in members:  # "gold" here is the annotators' choice
        m["heldout_pair_acc_vs_labels"] = m.pop("heldout_pair_acc_vs_gold")
    return {"source": "preferences", "members": members, "n_train_pairs": len(tr), "n_eval_pairs": n_held, "path": pref.path}
