"""The tiny IMDB task: built for real (data, tokenizer, policy, gold, proxies), cached, and checked."""
import json
import shutil

import numpy as np
import pytest
import torch

from tasks import store
from tasks.imdb.build import prepare, resolve, stage_folder


def test_split_is_deterministic_and_disjoint(tiny_cfg):
    from tasks.imdb.data import load_imdb, make_prompts

    a, b = load_imdb(tiny_cfg.task), load_imdb(tiny_cfg.task)
    assert a.train_text == b.train_text and len(a.heldout_text) == 400 and len(a.train_text) == 1600
    assert not set(a.train_text) & set(a.heldout_text)
    assert all("<br" not in t for t in a.train_text[:200])
    p = make_prompts(a.train_text, 50, tiny_cfg.task, seed=3)
    assert p == make_prompts(a.train_text, 50, tiny_cfg.task, seed=3)
    assert all(2 <= len(x.split(" ")) <= 5 for x in p)


def test_manifests_record_quality(tiny_assets):
    cfg, m, paths = tiny_assets
    pol = m["policy"]["metrics"]
    assert pol["params"] > 10_000 and np.isfinite(pol["heldout_perplexity"]) and len(pol["samples"]) == 4
    gold = m["gold"]["metrics"]  # the contextual judge, from a 2-layer backbone and 1,600 training reviews
    assert gold["heldout_sentiment_auc_50_words"] > 0.6 and 0 <= gold["natural_fraction_penalised"] < 0.5
    assert gold["n_train"] == 1600 and gold["repetition_check"] > 0.8
    members = m["proxy"]["metrics"]["members"]
    assert len(members) == cfg.proxy.n_members and len(paths.proxies) == cfg.proxy.n_members
    assert all(0 <= mm["heldout_pair_acc_vs_gold"] <= 1 for mm in members)
    index = json.loads((paths.policy.parent / "manifest.json").read_text())
    # the session's data dir is shared: other tests may have added the SALSA stage
    assert {"policy", "gold", "proxy"} <= set(index) <= {"policy", "gold", "proxy", "sft"}


def test_gold_scorer_matches_sklearn(tiny_assets, tmp_path):
    """The pickle-free scorer reproduces sklearn's TF-IDF + logistic regression exactly."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from tasks.imdb.data import load_imdb
    from learner.models.gold import TFIDF_KW, GoldScorer

    from tasks.imdb.gold import train_gold

    cfg, _, _ = tiny_assets
    gcfg = cfg.gold.model_copy(update={"kind": "tfidf_logreg", "max_features": 5000})
    split = load_imdb(cfg.task)
    m = train_gold(gcfg, split, tmp_path)
    vec = TfidfVectorizer(max_features=gcfg.max_features, **TFIDF_KW)
    clf = LogisticRegression(C=gcfg.C, max_iter=2000).fit(vec.fit_transform(split.train_text), split.train_label)
    ref = clf.decision_function(vec.transform(split.heldout_text[:100]))
    ours = GoldScorer(tmp_path).score(split.heldout_text[:100])
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    assert GoldScorer(tmp_path).score(["this movie was wonderful, brilliant and moving"])[0] > GoldScorer(tmp_path).score(["awful, boring, the worst waste of time"])[0]
    assert m["heldout_accuracy"] > 0.75 and m["heldout_auc"] > 0.85  # 1,600 training reviews


def test_second_prepare_reuses_cache(tiny_assets):
    cfg, m, _ = tiny_assets
    again = prepare(cfg)
    for stage in ("policy", "gold", "proxy"):
        assert again[stage]["built_at"] == m[stage]["built_at"], stage


def test_policy_loads_through_from_pretrained_and_generates(tiny_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.imdb.policy import sample

    _, _, paths = tiny_assets
    model = AutoModelForCausalLM.from_pretrained(str(paths.policy))
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    out = sample(model, tok, ["This film", "I hated"], max_new_tokens=6, seed=0)
    assert len(out) == 2 and all(len(tok.encode(o, add_special_tokens=False)) >= 3 for o in out)


def test_proxy_training_lowers_bt_loss_on_separable_pairs(tiny_assets):
    """A member trained on clean, easy pairs learns them (the BT loss and trainer are real)."""
    from tasks.reward_models import new_member, train_member

    cfg, _, paths = tiny_assets
    cfg = cfg.model_copy(update={"proxy": cfg.proxy.model_copy(update={"epochs": 4, "lr": 3e-3})})
    good = [f"great wonderful film number {i}" for i in range(48)]
    bad = [f"awful boring film number {i}" for i in range(48)]
    rm = new_member(cfg, paths.policy, seed=0)
    losses = train_member(rm, good, bad, cfg, seed=0, desc="t")
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3])
    assert (rm.score(good[:10]) > rm.score(bad[:10])).all()


def _copy_task(tmp_path, cfg):
    src = stage_folder(cfg, "policy")[0].parent
    dst = tmp_path / "data" / cfg.task.name
    shutil.copytree(src, dst)
    return cfg.model_copy(update={"data_dir": str(tmp_path / "data")})


def test_missing_artefact_error_names_it_and_the_command(tiny_assets, tmp_path):
    cfg = _copy_task(tmp_path, tiny_assets[0])
    shutil.rmtree(stage_folder(cfg, "gold")[0])
    with pytest.raises(store.AssetError, match=r"gold artefact missing .*tether prepare tiny"):
        resolve(cfg, cfg_source="tiny")


def test_corrupt_artefact_error(tiny_assets, tmp_path):
    cfg = _copy_task(tmp_path, tiny_assets[0])
    folder = stage_folder(cfg, "proxy")[0]
    (folder / store.MANIFEST).write_text("{not json")
    with pytest.raises(store.AssetError, match=r"proxy artefact .*corrupt.*--rebuild"):
        resolve(cfg, cfg_source="tiny")
    cfg2 = _copy_task(tmp_path / "b", tiny_assets[0])
    (stage_folder(cfg2, "policy")[0] / "model.safetensors").unlink()
    with pytest.raises(store.AssetError, match=r"policy artefact .*incomplete.*model.safetensors"):
        resolve(cfg2, cfg_source="tiny")


def test_artefact_from_other_config_is_refused(tiny_assets, tmp_path):
    cfg = _copy_task(tmp_path, tiny_assets[0])
    folder, key = stage_folder(cfg, "gold")
    changed = cfg.model_copy(update={"gold": cfg.gold.model_copy(update={"C": 9.0})})
    new_folder, new_key = stage_folder(changed, "gold")
    assert new_key != key
    shutil.copytree(folder, new_folder)  # someone copied an old artefact into the new config's place
    with pytest.raises(store.AssetError, match=r"built with a different config"):
        resolve(changed, cfg_source="my.yaml")


def test_reward_model_mean_pooling_ignores_padding_and_is_declared(tiny_assets):
    from transformers import AutoConfig

    from learner.models.reward import RewardModel

    _, _, paths = tiny_assets
    assert AutoConfig.from_pretrained(str(paths.proxies[0])).tether_pooling == "mean"
    rm = RewardModel.load(paths.proxies[0])
    alone = rm.score(["A short one"])
    batched = rm.score(["A short one", "a much longer text that forces padding of the first one in the batch"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    # the mean readout, by hand
    enc = rm._enc(["A short one"])
    h = rm.model.model(**enc).last_hidden_state.mean(1)
    assert torch.allclose(rm.model.score(h)[0, 0], alone[0], atol=1e-5)


def test_committed_policy_matches_default_config_and_is_used(tmp_path):
    """The shipped checkpoint is keyed to configs/default.yaml: a schema or preset change that alters
    the policy's key must come with `tether prepare --rebuild` and a new committed checkpoint."""
    from tasks.imdb.build import COMMITTED_POLICY, _policy_stage, stage_folder
    from learner.config import load_config

    cfg = load_config("default", [f"data_dir={tmp_path}"])
    committed = store.read_manifest(COMMITTED_POLICY)
    folder, key = stage_folder(cfg, "policy")
    assert committed is not None and committed["key"] == key
    assert committed["metrics"]["heldout_perplexity"] < 100 and committed["metrics"]["params"] > 4_000_000
    m = _policy_stage(cfg, split=None, rebuild=False)  # copies, never pretrains (split unused)
    assert m["key"] == key and (folder / "model.safetensors").exists()
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.config.num_hidden_layers == cfg.policy.n_layer and model.config.tie_word_embeddings


def test_committed_gold_matches_default_config_and_is_used_unless_rebuilding(tmp_path, monkeypatch):
    """The shipped judge is keyed to configs/default.yaml (a change to its key needs `tether prepare --rebuild` and a new
    assets/imdb-gold); prepare copies it and rebuilds only the word trigram model; gold.committed_checkpoint=false and
    --rebuild train instead (refused here before any training starts)."""
    import tasks.imdb.gold as gold_mod
    from learner.config import load_config
    from tasks.imdb.build import COMMITTED_GOLD, _gold_stage, _policy_stage, required, stage_folder
    from tasks.imdb.data import load_imdb

    cfg = load_config("default", [f"data_dir={tmp_path}"])
    committed = store.read_manifest(COMMITTED_GOLD)
    folder, key = stage_folder(cfg, "gold")
    assert committed is not None and committed["key"] == key and committed["stage"] == "gold"
    assert not (COMMITTED_GOLD / "ngram.npz").exists()  # rebuilt at prepare, not shipped
    split = load_imdb(cfg.task)
    _policy_stage(cfg, split, False)

    def no_training(*a, **k):
        raise RuntimeError("trained")

    monkeypatch.setattr(gold_mod, "train_contextual_gold", no_training)
    m = _gold_stage(cfg, split, rebuild=False)
    assert m["key"] == key and all((folder / r).exists() for r in required(cfg, "gold"))
    assert store.reuse(folder, "gold", key, required(cfg, "gold")) is not None
    for other, rebuild in ((load_config("default", [f"data_dir={tmp_path / 'b'}", "gold.committed_checkpoint=false"]), False), (cfg, True)):
        _policy_stage(other, split, False)
        with pytest.raises(RuntimeError, match="trained"):
            _gold_stage(other, split, rebuild=rebuild)


def test_samples_per_prompt_builds_nothing_so_it_keys_no_asset():
    """generation.n_per_prompt (a run's groups) changes no proxy: a GRPO cell shares a PPO cell's assets; the generation
    settings the proxies' pairs are sampled with still key them."""
    from learner.config import load_config
    from tasks.imdb.build import stage_folder

    base = load_config("default")
    grouped = load_config("default", ["generation.n_per_prompt=8", "ppo.advantage=grpo"])
    longer = load_config("default", ["generation.max_new_tokens=32"])
    for stage in ("policy", "gold", "proxy"):
        assert stage_folder(base, stage) == stage_folder(grouped, stage), stage
    assert stage_folder(base, "proxy") != stage_folder(longer, "proxy")
