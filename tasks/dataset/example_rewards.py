"""Example reward functions for function scorers (``kind: function``) and `tether reward-server`: rule-based and verifiable
rewards of the shape every function scorer has, ``f(prompts, responses, **metadata) -> list[float]``.

``prompts`` are the task's own prompts (a string, or a chat messages list), ``responses`` the sampled texts, and each metadata
column (task.data.metadata_keys) arrives as a keyword argument holding one value per sample.
"""
from __future__ import annotations

import re

_WORD = re.compile(r"\w+")


def contains_answer(prompts: list, responses: list[str], answer: list | None = None, **_) -> list[float]:
    """1.0 when the response contains the row's reference answer (case-insensitive), else 0.0: a verifiable reward."""
    if answer is None:
        raise ValueError("contains_answer needs the metadata column 'answer' (task.data.metadata_keys: [answer])")
    return [float(str(a).strip().lower() in r.lower()) if a is not None else 0.0 for r, a in zip(responses, answer)]


def word_count(prompts: list, responses: list[str], **_) -> list[float]:
    """The number of words in the response, scaled: log(1 + words). A reward that is easy to over-optimise (longer is better)."""
    import math

    return [math.log1p(len(_WORD.findall(r))) for r in responses]


def distinct_words(prompts: list, responses: list[str], **_) -> list[float]:
    """Fraction of distinct words in the response (1.0 for an empty one is avoided: 0.0), a gold-like check on repetition."""
    out = []
    for r in responses:
        w = [x.lower() for x in _WORD.findall(r)]
        out.append(len(set(w)) / len(w) if w else 0.0)
    return out


def vowel_fraction(prompts: list, responses: list[str], **_) -> list[float]:
    """Fraction of the response's letters that are vowels, minus 0.3: a smooth, learnable toy reward for tests and demos."""
    out = []
    for r in responses:
        letters = [c for c in r.lower() if c.isalpha()]
        out.append(sum(c in "aeiou" for c in letters) / len(letters) - 0.3 if letters else -0.3)
    return out
