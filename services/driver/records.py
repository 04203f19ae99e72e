"""What the loop records of a scored batch: its reward metrics (every iteration) and, at an evaluation, its samples."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def iteration_metrics(scored) -> dict[str, float]:
    s = np.asarray(scored.proxy_scores)  # (B, k)
    out = {
        "reward/proxy_mean": float(np.mean(scored.reward)),
        "reward/proxy_member_mean": float(s.mean()),
        "ensemble/std": float(np.mean(scored.spread)),
        "reward/gold_mean": float(np.mean(scored.gold)) if scored.gold is not None else float("nan"),
    }
    for i in range(s.shape[1]):
        out[f"reward/proxy_member_{i}"] = float(s[:, i].mean())
    return out


def write_samples(run_dir: Path, step: int, scored) -> Path:
    """The evaluation's samples, one JSON line each (prompt, response, every proxy member, the aggregate, gold):
    run_dir/samples/step-NNNNNN.jsonl, rewritten whole if the step is evaluated again (a resumed run)."""
    folder = Path(run_dir) / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    r = scored.rollouts
    gold = scored.gold if scored.gold is not None else [None] * len(r)
    rows = [{"prompt": p, "response": resp, "proxy": float(a), "proxy_members": [float(x) for x in m], "gold": None if g is None else float(g)}
            for p, resp, a, m, g in zip(r.prompts, r.responses, scored.reward, scored.proxy_scores, gold)]
    for row, meta in zip(rows, r.meta):  # a dataset task: the user's own prompt and its metadata columns
        row["meta"] = meta
    path = folder / f"step-{step:06d}.jsonl"
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(x) + "\n" for x in rows))
    os.replace(tmp, path)
    return path
