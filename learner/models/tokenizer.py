"""Prompt encoding shared by both rollout engines and the task build."""
from __future__ import annotations

EOS = "<|endoftext|>"
"""The task tokenizer's only special token: end of text, start of a review, and padding."""


def encode_prompts(tok, prompts: list[str]) -> list[list[int]]:
    """Prompt token ids: EOS marks the start of a review, exactly as in pretraining's packing."""
    return [[tok.eos_token_id] + tok.encode(p, add_special_tokens=False) for p in prompts]
