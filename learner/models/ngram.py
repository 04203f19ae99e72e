"""A word-level trigram language model with interpolated Kneser-Ney smoothing, stored as plain arrays.

The gold judge's fluency reader (tasks/imdb/gold.py trains it on the IMDB training reviews): a model
that is not the policy (different units, words instead of BPE pieces; different family), cheap to
score (vectorised lookups, about 10 us per word), and one that marks down what a reader would reject:
invented words (out of vocabulary), word salad and shuffled words (unseen bigrams and trigrams).

Interpolated Kneser-Ney (Chen & Goodman 1998, s.3.5) with one discount D per order:
  P3(w|u,v) = max(c(uvw)-D,0)/c(uv.) + D*N1+(uv.)/c(uv.) * P2(w|v)       (P2 when c(uv.) = 0)
  P2(w|v)   = max(N1+(.vw)-D,0)/N1+(.v.) + D*N1+(v.)/N1+(.v.) * P1(w)    (continuation counts)
  P1(w)     = (1-e) * N1+(.w)/N1+(..) + e/V                              (e: a floor for <unk>)
Words are lowercased word/punctuation tokens; a word outside the vocabulary is <unk>.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
UNK, BOS = 0, 1


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class TrigramLM:
    def __init__(self, arrays: dict[str, np.ndarray], vocab: dict[str, int]):
        self.a = arrays
        self.vocab = vocab
        self.V = int(arrays["V"])
        self.D = float(arrays["D"])

    # ----------------------------------------------------------------- building
    @classmethod
    def fit(cls, texts: list[str], *, min_count: int = 3, max_vocab: int = 40_000, discount: float = 0.75) -> "TrigramLM":
        from collections import Counter

        toks = [words(t) for t in texts]
        counts = Counter(w for ws in toks for w in ws)
        kept = [w for w, c in counts.most_common(max_vocab) if c >= min_count]
        vocab = {w: i + 2 for i, w in enumerate(kept)}
        V = len(vocab) + 2
        seq = np.concatenate([np.asarray([BOS, BOS] + [vocab.get(w, UNK) for w in ws], dtype=np.int64) for ws in toks])
        u, v, w = seq[:-2], seq[1:-1], seq[2:]
        keep = w != BOS  # no trigram predicts the padding of the next review
        u, v, w = u[keep], v[keep], w[keep]
        tri, tri_c = np.unique((u * V + v) * V + w, return_counts=True)
        # context (u,v): total count and distinct followers
        ctx2 = tri // V
        ctx2_keys, ctx2_idx = np.unique(ctx2, return_inverse=True)
        ctx2_tot = np.bincount(ctx2_idx, weights=tri_c).astype(np.int64)
        ctx2_n1 = np.bincount(ctx2_idx).astype(np.int64)
        # bigram continuation counts N1+(. v w): distinct u before (v, w)
        bi = tri % (V * V)
        bi_keys, bi_cont = np.unique(bi, return_counts=True)
        v_of_bi = bi_keys // V
        ctx1_keys, ctx1_idx = np.unique(v_of_bi, return_inverse=True)
        ctx1_tot = np.bincount(ctx1_idx, weights=bi_cont).astype(np.int64)  # N1+(. v .)
        ctx1_n1 = np.bincount(ctx1_idx).astype(np.int64)  # N1+(v .)
        uni_cont = np.bincount(bi_keys % V, minlength=V).astype(np.float64)  # N1+(. w)
        arrays = {
            "V": np.int64(V), "D": np.float64(discount),
            "tri": tri, "tri_c": tri_c.astype(np.int64),
            "ctx2": ctx2_keys, "ctx2_tot": ctx2_tot, "ctx2_n1": ctx2_n1,
            "bi": bi_keys, "bi_c": bi_cont.astype(np.int64),
            "ctx1": ctx1_keys, "ctx1_tot": ctx1_tot, "ctx1_n1": ctx1_n1,
            "uni": uni_cont,
        }
        return cls(arrays, vocab)

    def save(self, folder: Path) -> None:
        import json

        np.savez_compressed(folder / "ngram.npz", **self.a)
        (folder / "ngram_vocab.json").write_text(json.dumps(self.vocab))

    @classmethod
    def load(cls, folder: Path) -> "TrigramLM":
        import json

        with np.load(folder / "ngram.npz") as f:
            arrays = {k: f[k] for k in f.files}
        return cls(arrays, json.loads((folder / "ngram_vocab.json").read_text()))

    # ----------------------------------------------------------------- scoring
    @staticmethod
    def _lookup(keys: np.ndarray, vals: np.ndarray, q: np.ndarray) -> np.ndarray:
        i = np.searchsorted(keys, q).clip(max=len(keys) - 1)
        return np.where(keys[i] == q, vals[i], 0)

    def ids(self, text: str) -> np.ndarray:
        return np.asarray([BOS, BOS] + [self.vocab.get(w, UNK) for w in words(text)], dtype=np.int64)

    def token_logprobs(self, text: str, *, with_unigram: bool = False):
        """Natural-log probability of each word of `text` given the two before it, (n_words,);
        with_unigram: also each word's smoothed unigram log-probability (the same shape)."""
        s = self.ids(text)
        if len(s) <= 2:
            return (np.zeros(0), np.zeros(0)) if with_unigram else np.zeros(0)
        lp3, lp1 = self.logprob_ids(s[:-2], s[1:-1], s[2:])
        return (lp3, lp1) if with_unigram else lp3

    def logprob_ids(self, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """log P3(w|u,v) and log P1(w) for arrays of word ids (the formulas in the module docstring)."""
        a, V, D = self.a, self.V, self.D
        eps = 1e-3
        p1 = (1 - eps) * a["uni"][w] / a["uni"].sum() + eps / V
        c1_tot = self._lookup(a["ctx1"], a["ctx1_tot"], v).astype(np.float64)
        c1_n1 = self._lookup(a["ctx1"], a["ctx1_n1"], v).astype(np.float64)
        bic = self._lookup(a["bi"], a["bi_c"], v * V + w).astype(np.float64)
        safe1 = np.maximum(c1_tot, 1)
        p2 = np.where(c1_tot > 0, np.maximum(bic - D, 0) / safe1 + D * c1_n1 / safe1 * p1, p1)
        ctx = u * V + v
        c2_tot = self._lookup(a["ctx2"], a["ctx2_tot"], ctx).astype(np.float64)
        c2_n1 = self._lookup(a["ctx2"], a["ctx2_n1"], ctx).astype(np.float64)
        tric = self._lookup(a["tri"], a["tri_c"], ctx * V + w).astype(np.float64)
        safe2 = np.maximum(c2_tot, 1)
        p3 = np.where(c2_tot > 0, np.maximum(tric - D, 0) / safe2 + D * c2_n1 / safe2 * p2, p2)
        return np.log(p3), np.log(p1)

    def coherence(self, texts: list[str]) -> np.ndarray:
        """Mean over words of log P3(w|u,v) - log P1(w): how much the word order itself is worth, in nats per word.
        Controls for rare words, so a natural review of rare words keeps a high score; shuffling the same
        words, or a pile of adjectives, drops it (measured on IMDB: natural median about 2, shuffled below 0.4)."""
        out = np.zeros(len(texts))
        for i, t in enumerate(texts):
            lp3, lp1 = self.token_logprobs(t, with_unigram=True)
            out[i] = float((lp3 - lp1).mean()) if len(lp3) else 0.0
        return out


def repetition(text: str, n: int = 3) -> float:
    """Fraction of the text's word n-grams that repeat an earlier one: 0 for prose, -> 1 for a loop."""
    ws = words(text)
    grams = [tuple(ws[i : i + n]) for i in range(len(ws) - n + 1)]
    return 0.0 if not grams else 1.0 - len(set(grams)) / len(grams)


def diversity(text: str, window: int = 25) -> float:
    """Lexical diversity: the moving-average type-token ratio of the text's words over windows of `window` words
    (MATTR, Covington & McFall 2010), so texts of different lengths compare; plain type-token ratio when shorter.
    Natural IMDB reviews: median about 0.90, 1st percentile about 0.75; formulaic text that cycles through a few
    phrases ("I saw a great story, I loved a great story, ...") falls to 0.4-0.6. 1.0 for a text with no words."""
    ws = [w for w in words(text) if w[0].isalnum()]
    if not ws:
        return 1.0
    if len(ws) <= window:
        return len(set(ws)) / len(ws)
    from collections import Counter

    counts = Counter(ws[:window])
    total = len(counts)
    for i in range(window, len(ws)):  # slide: add ws[i], drop ws[i - window]
        old = ws[i - window]
        counts[old] -= 1
        if counts[old] == 0:
            del counts[old]
        counts[ws[i]] += 1
        total += len(counts)
    return total / ((len(ws) - window + 1) * window)
