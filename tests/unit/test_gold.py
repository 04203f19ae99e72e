"""The contextual gold judge: its trigram language model, its terms, and the probe set it must rank."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from learner.models.ngram import BOS, TrigramLM, diversity, repetition, words

CORPUS = [
    "this movie was great and the acting was wonderful .",
    "this movie was terrible and the plot was boring .",
    "the acting was great but the plot was thin .",
    "i loved this movie , the story was moving and the music was great .",
    "i hated this film , the story was dull and the ending was awful .",
] * 4


def test_trigram_probabilities_sum_to_one_in_seen_and_unseen_contexts():
    lm = TrigramLM.fit(CORPUS, min_count=2)
    V = lm.V
    w = np.arange(V)
    for u, v in [(BOS, BOS), (lm.vocab["this"], lm.vocab["movie"]), (lm.vocab["was"], lm.vocab["great"]),
                 (lm.vocab["great"], lm.vocab["this"]), (0, 0), (lm.vocab["plot"], lm.vocab["."])]:
        lp3, lp1 = lm.logprob_ids(np.full(V, u), np.full(V, v), w)
        assert abs(np.exp(lp3).sum() - 1) < 1e-9, (u, v)
        assert abs(np.exp(lp1).sum() - 1) < 1e-9


def test_trigram_counts_match_a_direct_count_and_the_model_round_trips(tmp_path):
    lm = TrigramLM.fit(CORPUS, min_count=1)
    toks = [lm.ids(t) for t in CORPUS]
    direct = sum(1 for s in toks for i in range(len(s) - 2) if tuple(s[i : i + 3]) == (lm.vocab["this"], lm.vocab["movie"], lm.vocab["was"]))
    key = (lm.vocab["this"] * lm.V + lm.vocab["movie"]) * lm.V + lm.vocab["was"]
    assert direct == 8 and lm._lookup(lm.a["tri"], lm.a["tri_c"], np.array([key]))[0] == direct
    lm.save(tmp_path)
    back = TrigramLM.load(tmp_path)
    np.testing.assert_array_equal(back.token_logprobs(CORPUS[3]), lm.token_logprobs(CORPUS[3]))


def test_coherence_prefers_word_order_and_repetition_catches_loops():
    lm = TrigramLM.fit(CORPUS, min_count=1)
    natural = "i loved this movie , the story was moving and the acting was wonderful ."
    shuffled = "moving wonderful the , was acting i story movie this the loved and was ."
    c = lm.coherence([natural, shuffled, ""])
    assert c[0] > c[1] + 1.0 and c[2] == 0.0
    assert repetition(natural) == 0.0
    assert repetition("the film is great " * 8) > 0.8
    assert repetition("") == 0.0 and repetition("two words") == 0.0
    assert words("It's GREAT, isn't it?") == ["it's", "great", ",", "isn't", "it", "?"]


def test_diversity_is_a_moving_type_token_ratio():
    def by_hand(text, w=25):
        ws = [x for x in words(text) if x[0].isalnum()]
        if len(ws) <= w:
            return len(set(ws)) / len(ws)
        return float(np.mean([len(set(ws[i : i + w])) / w for i in range(len(ws) - w + 1)]))

    formulaic = "I saw a great story, I loved a great story, written a great performance. I saw a great comedy, I loved the story. " * 2
    prose = ("The film is a quiet, patient study of grief that never hurries its characters toward easy answers; the two leads carry "
             "it with small gestures, and the score knows when to stay silent. By the end I had stopped noticing the camera.")
    for t in (formulaic, prose, "a b a", "one"):
        assert diversity(t) == pytest.approx(by_hand(t))
    assert diversity(prose) > 0.85 > 0.6 > diversity(formulaic)
    assert diversity("") == 1.0 and diversity("!!! ...") == 1.0


def test_contextual_gold_terms_combine_as_documented(tiny_assets):
    from learner.models.gold import ContextualGold, load_gold

    cfg, manifests, paths = tiny_assets
    assert cfg.gold.kind == "contextual"
    gold = load_gold(paths.gold)
    assert isinstance(gold, ContextualGold)
    texts = ["This movie was wonderful, the acting was great and I loved it.", "great " * 30, "The plot was dull. " * 6, "", "a"]
    c = gold.components(texts)
    p = gold.params
    np.testing.assert_allclose(c["sentiment"], p["sentiment_cap"] * np.tanh(c["sentiment_logit"] / p["sentiment_cap"]))
    np.testing.assert_allclose(c["gold"], c["sentiment"] - c["coherence_penalty"] - c["repetition_penalty"] - c["diversity_penalty"])
    np.testing.assert_allclose(c["diversity_penalty"], p["diversity_weight"] * np.maximum(0, p["diversity_floor"] - c["diversity"]))
    assert np.all(np.abs(c["sentiment"]) <= p["sentiment_cap"]) and np.all(np.isfinite(c["gold"]))
    assert c["repetition_penalty"][1] > 5 and c["repetition_penalty"][2] > 5 and c["repetition_penalty"][0] == 0
    np.testing.assert_allclose(gold.score(texts), c["gold"])
    m = manifests["gold"]["metrics"]
    assert 0 <= m["natural_fraction_penalised"] <= 1 and m["heldout_sentiment_auc_50_words"] > 0.5


def test_gold_evaluator_scores_each_batch_once(tiny_assets):
    """drift_and_gold() gives the drift statistics and each sample's gold from one scoring (the neural judge is not free);
    the gold role is called once per batch (actors/roleset.py)."""
    from transformers import AutoTokenizer

    from learner.models.gold_eval import GoldEvaluator
    from learner.types import Rollouts

    _, _, paths = tiny_assets
    ev = GoldEvaluator.from_paths(paths.gold, paths.policy)
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    prompts, responses = ["This film", "The plot"], [" was a good film", " was a bad film"]
    r = Rollouts(prompts, [[tok.eos_token_id] + tok.encode(p) for p in prompts], [tok.encode(x) for x in responses],
                 [[-1.0] * len(tok.encode(x)) for x in responses], responses, policy_version=0)
    calls = []
    real = ev.gold.components
    ev.gold.components = lambda t: calls.append(len(t)) or real(t)
    drift, gold = ev.drift_and_gold(r, prefix="train")
    assert calls == [2] and len(gold) == 2 and drift["train/gold_mean"] == np.mean(gold)
    assert gold == ev.gold_scores(r.texts) and calls == [2, 2]
    assert ev.evaluate(r, prefix="train") == drift


PROBES = Path(__file__).resolve().parents[1] / "data" / "gold_probes.json"


@pytest.mark.slow
def test_default_gold_ranks_every_natural_positive_review_above_every_degenerate_text(tmp_path):
    """The probe set (tests/data/make_gold_probes.py; natural reviews chosen without the gold) against the default
    config's gold as `tether prepare` makes it: the judge committed under assets/imdb-gold (trained by
    tasks/imdb/gold.py::train_contextual_gold; `tether prepare --rebuild` retrains it) with its trigram model rebuilt."""
    from learner.config import load_config
    from learner.models.gold import load_gold
    from tasks.imdb.build import _gold_stage, _policy_stage, resolve_partial
    from tasks.imdb.data import load_imdb

    cfg = load_config("default", [f"data_dir={tmp_path}"])
    split = load_imdb(cfg.task)
    _policy_stage(cfg, split, False)
    m = _gold_stage(cfg, split, False)
    assert m["metrics"]["heldout_gold_auc_50_words"] > 0.8 and m["metrics"]["n_train"] == 20000
    gold = load_gold(resolve_partial(cfg)["gold"])
    probes = json.loads(PROBES.read_text())
    pos = gold.score(probes["natural_positive"])
    neg = gold.score(probes["natural_negative"])
    worst = {k: float(np.max(gold.score(v))) for k, v in probes["degenerate"].items() if v}
    assert len(worst) >= 4 and len(pos) >= 15
    assert pos.min() > max(worst.values()), (pos.min(), worst)
    assert np.mean(pos[:, None] > neg[None, :]) > 0.9  # and it is still a sentiment judge

