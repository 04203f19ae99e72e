"""Prompt encoding shared by both rollout engines and the task build, and the token ids every engine agrees on: the
padding fallback and the stop tokens of any Hugging Face causal LM."""
from __future__ import annotations

from pathlib import Path

EOS = "<|endoftext|>"
"""The IMDB task tokenizer's only special token: end of text, start of a review, and padding."""


def encode_prompts(tok, prompts: list[str]) -> list[list[int]]:
    """The IMDB task's prompt token ids: EOS marks the start of a review, exactly as in pretraining's packing. (A dataset
    task encodes its prompts once, in `tether prepare`, with the policy's own conventions: tasks/dataset/prompts.py.)"""
    return [[tok.eos_token_id] + tok.encode(p, add_special_tokens=False) for p in prompts]


def stop_token_ids(tok, model_path: str | Path | None = None) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS, then each EOS of the model's generation config (chat models
    list several, e.g. Llama 3's <|eot_id|>), in that order, without repeats. ValueError when there is none."""
    ids: list[int] = []
    if tok.eos_token_id is not None:
        ids.append(int(tok.eos_token_id))
    if model_path is not None:
        try:
            from transformers import GenerationConfig

            extra = GenerationConfig.from_pretrained(str(model_path)).eos_token_id
        except (OSError, ValueError):  # no generation_config.json: the tokenizer's EOS alone
            extra = None
        for e in [extra] if isinstance(extra, int) else (extra or []):
            if int(e) not in ids:
                ids.append(int(e))
    if not ids:
        raise ValueError(f"the policy {model_path or ''} has no end-of-sequence token (neither its tokenizer's eos_token nor its "
                         "generation_config.json's eos_token_id): set one, or responses never end")
    return ids


def pad_token_id(tok) -> int:
    """The tokenizer's pad token, else its EOS (GPT-2-style tokenizers have none): every padded position is masked out, so
    the id only has to exist in the vocabulary."""
    if tok.pad_token_id is not None:
        return int(tok.pad_token_id)
    if tok.eos_token_id is not None:
        return int(tok.eos_token_id)
    raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has neither a pad nor an eos token: set pad_token in its tokenizer_config.json")


def with_padding(tok):
    """``tok`` with a pad token (its EOS when it has none), so that ``tok(..., padding=True)`` works; returns it."""
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ValueError(f"tokenizer {getattr(tok, 'name_or_path', '')!r} has neither a pad nor an eos token: set pad_token")
        tok.pad_token = tok.eos_token
    return tok


def cut_at_stop(ids: list[int], stops: list[int]) -> int:
    """Length of a response up to and including its first stop token (the stop is an action the policy took)."""
    for n, t in enumerate(ids):
        if t in stops:
            return n + 1
    return len(ids)
