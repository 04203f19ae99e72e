"""The initial policy pi_0: a small Llama-style causal LM pretrained on IMDB text (the analogue of gpt2-imdb).

Llama-style because vLLM's CPU build is tested here with that architecture; embeddings are tied, and
the weight-sync code saves ``lm_head.weight`` as its own tensor (see docs/cpu-notes.md).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from learner.config import PolicyConfig
from learner.models.policy import optimizer_step

log = logging.getLogger(__name__)


def llama_config(cfg: PolicyConfig, tok):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden,
        intermediate_size=cfg.intermediate,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=max(cfg.context, 256),
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        rms_norm_eps=1e-5,
    )


def pack(tok, texts: list[str]) -> np.ndarray:
    """All reviews as one token stream, each preceded by EOS (the review-start marker prompts also use)."""
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    out = np.empty(sum(len(x) + 1 for x in ids), dtype=np.int32)
    pos = 0
    for x in ids:
        out[pos] = eos
        out[pos + 1 : pos + 1 + len(x)] = x
        pos += len(x) + 1
    return out


@torch.no_grad()
def heldout_perplexity(model, stream: np.ndarray, context: int, *, n_windows: int = 64, seed: int = 1234) -> float:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(stream) - context - 1, size=n_windows)
    x = torch.from_numpy(np.stack([stream[s : s + context] for s in starts]).astype(np.int64))
    model.eval()
    losses = []
    for i in range(0, len(x), 16):
        losses.append(model(input_ids=x[i : i + 16], labels=x[i : i + 16]).loss.item())
    model.train()
    return float(math.exp(np.mean(losses)))


def pretrain(cfg: PolicyConfig, tok, train_texts: list[str], heldout_texts: list[str], out_dir: Path, *, seed: int = 0) -> dict:
    """Pretrain from scratch for cfg.pretrain_tokens tokens; resumable from out_dir/pretrain_state.pt."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    train_stream = pack(tok, train_texts)
    held_stream = pack(tok, heldout_texts[:2000])
    model = LlamaForCausalLM(llama_config(cfg, tok))
    n_params = sum(p.numel() for p in model.parameters())
    tokens_per_step = cfg.batch_size * cfg.context
    total_steps = max(1, cfg.pretrain_tokens // tokens_per_step)
    warmup = max(1, total_steps // 50)
    decay, no_decay = [], []
    for n, p in model.named_parameters():
        (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))
    )
    state_path = out_dir / "pretrain_state.pt"
    step = 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step = st["step"]
        torch.set_rng_state(st["torch_rng"])
        log.info("resuming pretraining at step %d/%d", step, total_steps)
    rng = np.random.default_rng(seed + step)
    model.train()
    t0 = time.time()
    ema_loss = None
    bar = tqdm(total=total_steps, initial=step, desc=f"pretrain policy ({n_params/1e6:.1f}M params)", unit="step", mininterval=5)
    save_every = max(50, total_steps // 20)
    while step < total_steps:
        starts = rng.integers(0, len(train_stream) - cfg.context - 1, size=cfg.batch_size)
        x = torch.from_numpy(np.stack([train_stream[s : s + cfg.context] for s in starts]).astype(np.int64))
        loss = model(input_ids=x, labels=x).loss
        optimizer_step(opt, loss, model.parameters(), 1.0)
        sched.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{ema_loss:.3f}", tok_s=f"{(step * tokens_per_step) / max(time.time() - t0, 1e-9):.0f}" if step else "")
        if step % save_every == 0 and step < total_steps:
            out_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step, "torch_rng": torch.get_rng_state()}, state_path)
            rng = np.random.default_rng(seed + step)  # resume gives the same stream from here
    bar.close()
    ppl = heldout_perplexity(model, held_stream, cfg.context)
    model.generation_config.pad_token_id = tok.eos_token_id
    model.to(torch.float16).save_pretrained(str(out_dir))  # half precision on disk; loaded as float32
    tok.save_pretrained(str(out_dir))
    if state_path.exists():
        state_path.unlink()
    return {
        "params": n_params,
        "tokens": total_steps * tokens_per_step,
        "heldout_perplexity": round(ppl, 2),
        "train_tokens_available": int(len(train_stream)),
        "seconds": round(time.time() - t0, 1),
    }


def sample(model, tok, prompts: list[str], *, max_new_tokens: int = 48, temperature: float = 1.0, top_k: int = 0, seed: int = 0, batch_size: int = 64) -> list[str]:
    """Continuations' text sampled by the transformers rollout engine (EOS-prefixed, left-padded prompts)."""
    from learner.config import GenerationConfig
    from learner.models.engine import TransformersEngine

    gen = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k)
    return TransformersEngine(model, tok, gen, batch_size=batch_size).generate(prompts, seed=seed).responses
