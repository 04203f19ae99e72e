"""Writes tests/data/gold_probes.json, the fixed probe set of the gold judge (tests/unit/test_gold.py).

Run once from the repository root (the committed JSON is what the test reads):
    .venv/bin/python tests/data/make_gold_probes.py [--runs RUN_DIR ...]

Natural reviews are 50-word windows of held-out IMDB reviews, chosen without the gold: the IMDB label
and a bag-of-words TF-IDF classifier fit on the training reviews must agree clearly (|logit| > 2.5).
Degenerate texts are built from them (shuffled words, repeated sentences) or from word lists (piles
of positive words, word salad drawn by word frequency). `--runs`: the evaluation samples of
over-optimised runs (their last evaluation's samples with the highest proxy score) join the set.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from learner.config import TaskConfig
from tasks.imdb.data import load_imdb

POSITIVE = ["great", "excellent", "wonderful", "amazing", "best", "brilliant", "loved", "perfect", "beautiful", "superb",
            "masterpiece", "fantastic", "love", "fun", "enjoyed", "highly", "recommend", "favorite", "outstanding", "touching"]
N = 20


def window(text: str, n: int = 50) -> str:
    return " ".join(text.split(" ")[:n])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="*", default=[], help="run folders whose last evaluation samples are over-optimised text")
    ap.add_argument("--per-run", type=int, default=4)
    args = ap.parse_args()
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    split = load_imdb(TaskConfig())
    vec = TfidfVectorizer(max_features=100_000, ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    clf = LogisticRegression(C=4.0, max_iter=2000).fit(vec.fit_transform(split.train_text), split.train_label)
    wins = [window(t) for t in split.heldout_text[:3000]]
    logit = clf.decision_function(vec.transform(wins))
    lab = split.heldout_label[:3000]
    pos = [w for w, z, y in zip(wins, logit, lab) if y == 1 and z > 2.5][:N]
    neg = [w for w, z, y in zip(wins, logit, lab) if y == 0 and z < -2.5][:N]
    rng = random.Random(0)
    shuffled = []
    for w in pos:
        ws = w.split(" ")
        rng.shuffle(ws)
        shuffled.append(" ".join(ws))
    prompts = [" ".join(w.split(" ")[: rng.randint(2, 5)]) for w in pos]
    piles = [(prompts[i] + " " if i % 2 else "") + " ".join(rng.choice(POSITIVE) for _ in range(rng.randint(10, 40))) for i in range(N)]
    reps = []
    for i, w in enumerate(pos):
        first = re.split(r"(?<=[.!?]) ", w)[0]
        first = " ".join(first.split(" ")[:12])
        reps.append(prompts[i] + " " + " ".join([first] * rng.randint(4, 8)) if i % 2 else " ".join([first] * rng.randint(4, 8)))
    counts = Counter(x for t in split.train_text[:5000] for x in t.split(" "))
    vocab, freq = zip(*counts.most_common(5000))
    p = np.asarray(freq, dtype=np.float64) / sum(freq)
    nprng = np.random.default_rng(0)
    salad = [" ".join(nprng.choice(vocab, size=int(nprng.integers(25, 50)), p=p)) for _ in range(N)]
    over = []
    for run in args.runs:
        last = sorted((Path(run) / "samples").glob("step-*.jsonl"))[-1]
        rows = sorted((json.loads(x) for x in last.read_text().splitlines()), key=lambda r: -r["proxy"])
        over += [r["prompt"] + r["response"] for r in rows[: args.per_run]]
    out_path = Path(__file__).with_name("gold_probes.json")
    old = json.loads(out_path.read_text()) if out_path.exists() else {}
    probes = {
        "natural_positive": pos, "natural_negative": neg,
        "degenerate": {"positive_piles": piles, "repetitions": reps, "shuffled_positive": shuffled, "word_salad": salad,
                       "overoptimised_runs": over or old.get("degenerate", {}).get("overoptimised_runs", [])},
        "how": __doc__.strip().splitlines()[0] + " See tests/data/make_gold_probes.py.",
    }
    out_path.write_text(json.dumps(probes, indent=1))
    print({k: len(v) for k, v in probes["degenerate"].items()}, len(pos), len(neg))


if __name__ == "__main__":
    main()
