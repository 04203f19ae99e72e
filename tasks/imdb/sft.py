"""SALSA's SFT models (Chegini et al. 2024; docs/methods.md s.7): n fine-tunes of pi_0 that differ
only in seed and data order, and their weight soup as the KL reference.

Each model continues training pi_0 on the IMDB training reviews for ``tokens`` tokens (warm-up then
cosine decay) with its own seed, so its windows are drawn in a different order. They are saved in
float32 (their distance from pi_0 is small; half precision would round part of it away).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learner.methods.soup import weight_soup
from learner.models.policy import load_policy, optimizer_step
from tasks.imdb.policy import heldout_perplexity, pack

log = logging.getLogger(__name__)


def finetune(base: str | Path, out_dir: Path, train_texts: list[str], *, tokens: int, lr: float, seed: int, batch_size: int,
             context: int, desc: str = "sft") -> dict:
    """Fine-tune the causal LM at ``base`` for ``tokens`` tokens; save it (with the tokenizer) to out_dir."""
    from transformers import AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = load_policy(base).train()
    stream = pack(tok, train_texts)
    steps = max(1, tokens // (batch_size * context))
    warmup = max(1, steps // 20)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    rng = np.random.default_rng(seed)  # the data order: which windows, in which order
    t0 = time.time()
    losses = []
    for _ in tqdm(range(steps), desc=desc, unit="step", mininterval=5):
        starts = rng.integers(0, len(stream) - context - 1, size=batch_size)
        x = torch.from_numpy(np.stack([stream[s : s + context] for s in starts]).astype(np.int64))
        loss = model(input_ids=x, labels=x).loss
        optimizer_step(opt, loss, model.parameters(), 1.0)
        sched.step()
        losses.append(loss.item())
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return {"seed": seed, "steps": steps, "tokens": steps * batch_size * context, "final_train_loss": round(float(np.mean(losses[-20:])), 4),
            "seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def param_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """L2 distance between two state dicts' floating-point tensors."""
    return float(math.sqrt(sum(float(((a[k].float() - b[k].float()) ** 2).sum()) for k in a if a[k].is_floating_point())))


def build_sft(base: str | Path, out_dir: Path, train_texts: list[str], heldout_texts: list[str], *, n: int, tokens: int, lr: float,
              seed: int, batch_size: int, context: int) -> dict:
    """Train n SFT models into out_dir/sft-<i>/ and measure them, pi_0 and their uniform soup on held-out text."""
    from transformers import AutoTokenizer

    members = []
    for i in range(n):
        members.append(finetune(base, out_dir / f"sft-{i}", train_texts, tokens=tokens, lr=lr, seed=seed + 7919 * (i + 1),
                                batch_size=batch_size, context=context, desc=f"sft {i + 1}/{n}"))
    tok = AutoTokenizer.from_pretrained(str(base))
    held = pack(tok, heldout_texts[:2000])
    base_model = load_policy(base)
    sds = [load_policy(out_dir / f"sft-{i}").state_dict() for i in range(n)]
    for i, m in enumerate(members):
        mod = load_policy(out_dir / f"sft-{i}")
        m["heldout_perplexity"] = round(heldout_perplexity(mod, held, context), 3)
        m["distance_from_base"] = round(param_distance(sds[i], base_model.state_dict()), 4)
    soup = load_policy(out_dir / "sft-0")
    soup.load_state_dict(weight_soup(sds))
    return {
        "members": members,
        "base_heldout_perplexity": round(heldout_perplexity(base_model, held, context), 3),
        "soup_heldout_perplexity": round(heldout_perplexity(soup, held, context), 3),
        "distance_between_0_1": round(param_distance(sds[0], sds[1]), 4) if n > 1 else 0.0,
    }


def write_soup(paths: list[str | Path], weights: list[float], out_dir: Path) -> Path:
    """SALSA's start model: the weight soup of ``paths`` saved as a model folder (with the first model's tokenizer),
    so that every role can load it (vLLM reads folders). Reused when ``out_dir`` already holds this soup."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from learner.models.policy import load_soup

    out_dir = Path(out_dir)
    meta = {"sources": [str(p) for p in paths], "weights": [float(w) for w in weights]}
    marker = out_dir / "tether_soup.json"
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return out_dir
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    load_soup(list(paths), list(weights)).save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(paths[0])).save_pretrained(str(tmp))
    (tmp / "tether_soup.json").write_text(json.dumps(meta))
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
