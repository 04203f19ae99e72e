"""A user's own task without Ray: prompts from the user's files, Hugging Face models tether did not build (a Llama-style chat
policy, a GPT-2-style one without a pad token), every scorer kind and each bad input the issue lists. The default path
(Ray actors + vLLM, through `tether train` and `tether sweep`) is in tests/integration/test_own_task_ray.py."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import own_task as o
from learner.config import ConfigError, load_config
from learner.models.scorers import ScorerError, make_scorer
from tasks import get_task
from tasks.store import AssetError


@pytest.fixture(scope="module")
def own(tmp_path_factory):
    d = tmp_path_factory.mktemp("own")
    return {"dir": d, "llama": o.llama_policy(d / "llama"), "gpt2": o.gpt2_policy(d / "gpt2"), "rm": o.reward_model(d / "rm"),
            "gold": o.gold_classifier(d / "gold"), "prompts": o.write_jsonl(d / "prompts.jsonl", o.prompt_rows()),
            "prefs": o.write_jsonl(d / "prefs.jsonl", o.preference_rows())}


def _cfg(own, tmp_path, **over):
    sets = {"task.name": "dataset", "task.data.path": str(own["prompts"]), "policy.name_or_path": str(own["llama"]),
            "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"), "gold.kind": "scorer",
            "gold.scorer.kind": "function", "gold.scorer.function": "tasks.dataset.example_rewards:distinct_words",
            "proxy.source": "scorers", "proxy.scorers": json.dumps([{"kind": "function", "function": "tasks.dataset.example_rewards:word_count"}]),
            "generation.max_new_tokens": "8", "train.threads": "1", "task.data.max_prompt_tokens": "64", **over}
    return load_config("tiny", [f"{k}={v}" for k, v in sets.items() if v is not None])


def test_prompts_from_a_jsonl_file_with_the_chat_template(own, tmp_path):
    cfg = _cfg(own, tmp_path, **{"task.data.chat_template": "true", "task.data.system_prompt": "Be brief.",
                                 "task.data.metadata_keys": "[answer]", "task.data.max_prompt_tokens": "40"})
    task = get_task(cfg)
    m = task.prepare()["prompts"]["metrics"]
    assert m["rows"] == 40 and m["train_prompts"] + m["heldout_prompts"] + m["dropped_too_long"] == 40
    assert m["heldout_prompts"] == round(m["kept"] * 0.2) and m["dropped_too_long"] >= 1  # some rows are over 40 tokens
    ps = task.prompts("train", 6, seed=3)
    assert ps.texts == task.prompts("train", 6, seed=3).texts and ps.texts != task.prompts("train", 6, seed=4).texts  # seeded
    tok = __import__("transformers").AutoTokenizer.from_pretrained(str(own["llama"]))
    for text, ids, meta in zip(ps.texts, ps.ids, ps.meta):
        assert text == tok.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": meta["prompt"]}],
                                               tokenize=False, add_generation_prompt=True)
        assert text.startswith("<s><|system|>Be brief.<|end|><|user|>question") and text.endswith("<|assistant|>")
        assert ids == tok.encode(text, add_special_tokens=False) and ids[0] == tok.bos_token_id and len(ids) <= 40  # one BOS
        assert set(meta) == {"prompt", "answer"}
    held = {m["prompt"] for m in task.prompts("heldout", 50, seed=0).meta}
    assert held and not held & {m["prompt"] for m in task.prompts("train", 200, seed=0).meta}  # disjoint splits


def test_prompt_formats_and_held_out_splits(own, tmp_path):
    import datasets

    rows = o.prompt_rows()
    chat = [{"messages": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]} for r in rows]
    ds = datasets.Dataset.from_list(chat)
    ds.to_parquet(str(tmp_path / "p.parquet"))
    datasets.DatasetDict({"train": ds.select(range(30)), "test": ds.select(range(30, 40))}).save_to_disk(str(tmp_path / "folder"))
    datasets.Dataset.from_list(rows).to_csv(str(tmp_path / "p.csv"))
    base = {"task.data.prompt_key": "messages", "task.data.chat_template": "true"}
    a = get_task(_cfg(own, tmp_path, **base, **{"task.data.path": str(tmp_path / "p.parquet")}))
    a.prepare()
    b = get_task(_cfg(own, tmp_path, **base, **{"task.data.path": str(tmp_path / "folder"), "task.data.heldout_split": "test"}))
    mb = b.prepare()["prompts"]["metrics"]
    assert mb["train_prompts"] == 30 and mb["heldout_prompts"] == 10  # the given held-out split, not a fraction
    c = get_task(_cfg(own, tmp_path, **{"task.data.path": str(tmp_path / "p.csv")}))  # plain strings: the tokenizer's own BOS
    c.prepare()
    p = c.prompts("train", 1, seed=0)
    assert not p.texts[0].startswith("<s>") and p.ids[0][0] == 0  # text as given; the Llama tokenizer adds its BOS id
    assert a.prompts("heldout", 3, seed=1).texts[0].endswith("<|assistant|>")


def test_bad_prompt_data_is_refused_with_the_field_and_what_is_accepted(own, tmp_path):
    def err(**over):
        with pytest.raises(AssetError) as e:
            get_task(_cfg(own, tmp_path, **over)).prepare()
        return str(e.value)

    assert "no column 'question'" in err(**{"task.data.prompt_key": "question"}) and "'prompt'" in err(**{"task.data.prompt_key": "question"})
    (tmp_path / "empty.jsonl").write_text("")
    assert "task.data.path" in err(**{"task.data.path": str(tmp_path / "empty.jsonl")})
    (tmp_path / "x.txt").write_text("hello")
    assert "accepted files: .jsonl, .json, .csv, .parquet" in err(**{"task.data.path": str(tmp_path / "x.txt")})
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    assert "cannot read" in err(**{"task.data.path": str(tmp_path / "bad.parquet")})
    assert "no file or folder" in err(**{"task.data.path": str(tmp_path / "missing.jsonl")})
    e = err(**{"task.data.max_prompt_tokens": "2"})
    assert "all 40 non-empty prompts are longer than task.data.max_prompt_tokens (2" in e
    assert "row" in err(**{"task.data.max_prompt_tokens": "12", "task.data.too_long": "error"})
    o.write_jsonl(tmp_path / "msgs.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}] * 4)
    assert "chat_template: true" in err(**{"task.data.path": str(tmp_path / "msgs.jsonl")})
    o.write_jsonl(tmp_path / "odd.jsonl", [{"prompt": 5}] * 4)
    assert "a prompt is a string or a non-empty list" in err(**{"task.data.path": str(tmp_path / "odd.jsonl"), "task.data.chat_template": "true"})
    with pytest.raises(AssetError, match="tether prepare"):  # not prepared: the command that prepares it
        get_task(_cfg(own, tmp_path, **{"data_dir": str(tmp_path / "fresh")})).resolve()


def test_config_errors_name_the_field(own, tmp_path):
    with pytest.raises(ConfigError, match="policy.name_or_path"):
        _cfg(own, tmp_path, **{"policy.name_or_path": None, "policy": None})
    with pytest.raises(ConfigError, match="gold.kind"):
        load_config("tiny", ["task.name=dataset", f"task.data.path={own['prompts']}", f"policy.name_or_path={own['llama']}"])
    with pytest.raises(ConfigError, match="task.data applies only"):
        load_config("tiny", [f"task.data.path={own['prompts']}"])
    with pytest.raises(ConfigError, match="proxy.scorers"):
        _cfg(own, tmp_path, **{"proxy.scorers": "[]"})
    with pytest.raises(ConfigError, match="package.module:function"):
        _cfg(own, tmp_path, **{"gold.scorer.function": "os.system"})
    with pytest.raises(ConfigError, match="chat_template"):
        _cfg(own, tmp_path, **{"task.data.system_prompt": "x"})
    with pytest.raises(ConfigError, match="needs `url`"):
        _cfg(own, tmp_path, **{"proxy.scorers": json.dumps([{"kind": "http"}])})


def test_a_gpt2_style_policy_without_a_pad_token_samples_and_stops(own):
    """Before: TransformersEngine padded with pad_token_id None (TypeError in torch.full)."""
    from transformers import AutoTokenizer

    from learner.config import GenerationConfig
    from learner.models.engine import TransformersEngine

    eng = TransformersEngine.from_path(own["gpt2"], GenerationConfig(max_new_tokens=6))
    tok = AutoTokenizer.from_pretrained(str(own["gpt2"]))
    assert tok.pad_token_id is None and eng.pad_id == tok.eos_token_id and eng.stop_ids == [tok.eos_token_id]
    ids = [tok.encode("the film"), tok.encode("a very long question about the plot")]
    r = eng.generate(["the film", "a very long question about the plot"], seed=0, prompt_ids=ids)
    assert r.prompt_ids == ids and all(1 <= len(x) <= 6 for x in r.response_ids)
    assert all(len(lp) == len(x) for lp, x in zip(r.behaviour_logprobs, r.response_ids))
    llama = TransformersEngine.from_path(own["llama"], GenerationConfig(max_new_tokens=6))
    ltok = AutoTokenizer.from_pretrained(str(own["llama"]))
    assert llama.stop_ids == [ltok.eos_token_id, ltok.convert_tokens_to_ids("<|end|>")]  # the generation config's second stop token
    # every stop token ends a response: force <|end|> by giving it all the probability
    class EndTurn(torch.nn.Module):  # logits that put all the probability on <|end|>
        def forward(self, h):
            out = torch.zeros(*h.shape[:-1], len(ltok), dtype=h.dtype)
            out[..., llama.stop_ids[1]] = 50.0
            return out

    llama.model.lm_head = EndTurn()
    r = llama.generate(["x"], seed=0, prompt_ids=[ltok.encode("the film")])
    assert r.response_ids == [[llama.stop_ids[1]]]


def test_hf_reward_model_scorers(own):
    rm = make_scorer({"kind": "hf_reward_model", "name_or_path": str(own["rm"]), "chat_template": True, "max_len": 64})
    a = rm.score_samples(["what is it?", [{"role": "user", "content": "what is it?"}]], ["a film", "a film"])
    assert a.shape == (2,) and np.isfinite(a).all() and a[0] == pytest.approx(a[1])  # a string prompt is one user turn
    # its own tokenizer and chat template (not the policy's): the text it reads
    texts = rm.inner._texts(["q"], ["r"])
    assert texts == ["<s><|user|>q<|end|><|assistant|>r<|end|>"]
    with pytest.raises(ScorerError, match="2 labels .*0=NEGATIVE, 1=POSITIVE.*ambiguous"):
        make_scorer({"kind": "hf_reward_model", "name_or_path": str(own["gold"])})
    with pytest.raises(ScorerError, match="not one of the model's labels"):
        make_scorer({"kind": "hf_reward_model", "name_or_path": str(own["gold"]), "label": "GOOD"})
    g = make_scorer({"kind": "hf_reward_model", "name_or_path": str(own["gold"]), "label": "POSITIVE"})
    x = g.score_samples(["the film was"], [" good", ])
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(own["gold"]))
    m = AutoModelForSequenceClassification.from_pretrained(str(own["gold"])).eval()
    with torch.no_grad():
        logits = m(**tok(["the film was good"], return_tensors="pt")).logits[0]
    assert x[0] == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)  # two labels: the log-odds is the logit difference
    with pytest.raises(ScorerError, match="cannot load"):
        make_scorer({"kind": "hf_reward_model", "name_or_path": str(own["dir"] / "nothing")})


def test_hf_classifier_gold_reads_a_one_logit_reward_model(own):
    """Before: gold.kind hf_classifier scored logits[:, -1] - logits[:, 0], which is 0 for a one-logit reward model."""
    from learner.config import GoldConfig
    from learner.models.gold import load_gold

    spec = GoldConfig(kind="hf_classifier", name_or_path=str(own["rm"])).scorer_spec().model_dump()
    s = load_gold(spec).score(["the film was good", "bad plot"])
    assert np.all(s != 0) and s[0] != s[1]


def test_function_scorers_and_bad_answers():
    f = make_scorer({"kind": "function", "function": "tasks.dataset.example_rewards:contains_answer"})
    assert list(f.score_samples(["q", "q"], ["it is Paris", "no"], [{"answer": "paris"}, {"answer": "paris"}])) == [1.0, 0.0]
    for fn, msg in (("nan_reward", "non-finite reward nan for sample 0"), ("inf_reward", "non-finite reward inf"),
                    ("short_reward", "returned 1 values for 2 samples"), ("failing_reward", "raised RuntimeError: the judge is down")):
        s = make_scorer({"kind": "function", "function": f"own_task:{fn}", "name": fn})
        with pytest.raises(ScorerError, match=f"scorer {fn}: .*{msg}"):
            s.score_samples(["a", "b"], ["x", "y"])
    with pytest.raises(ScorerError, match="cannot import module"):
        make_scorer({"kind": "function", "function": "no_such_module:f"})
    with pytest.raises(ScorerError, match="has no function"):
        make_scorer({"kind": "function", "function": "own_task:no_such"})


def test_http_scorer_against_a_real_server(monkeypatch):
    from tasks.dataset.example_rewards import vowel_fraction

    proc, url = o.start_reward_server("tasks.dataset.example_rewards:vowel_fraction", token="s3cret")
    bad, bad_url = o.start_reward_server("own_task:failing_reward")
    slow, slow_url = o.start_reward_server("own_task:slow_reward")
    try:
        monkeypatch.setenv("TETHER_TEST_RM_TOKEN", "s3cret")
        s = make_scorer({"kind": "http", "url": url, "token_env": "TETHER_TEST_RM_TOKEN", "batch_size": 3})
        prompts, resp = ["p1", "p2", "p3", "p4"], ["aaa", "xyz", "hello there", "queue"]
        assert list(s.score_samples(prompts, resp)) == pytest.approx(vowel_fraction(prompts, resp))  # 2 batches
        monkeypatch.setenv("TETHER_TEST_RM_TOKEN", "wrong")
        with pytest.raises(ScorerError, match="answered 401.*not retried"):
            make_scorer({"kind": "http", "url": url, "token_env": "TETHER_TEST_RM_TOKEN"}).score_samples(["p"], ["r"])
        monkeypatch.delenv("TETHER_TEST_RM_TOKEN")
        with pytest.raises(ScorerError, match="TETHER_TEST_RM_TOKEN .*not set"):
            make_scorer({"kind": "http", "url": url, "token_env": "TETHER_TEST_RM_TOKEN"})
        with pytest.raises(ScorerError, match=r"answered 500 \(after 3 attempts\).*tether train --resume"):
            make_scorer({"kind": "http", "url": bad_url, "retries": 2, "backoff_s": 0.05}).score_samples(["p"], ["r"])
        with pytest.raises(ScorerError, match="within 0.5 s"):
            make_scorer({"kind": "http", "url": slow_url, "retries": 1, "backoff_s": 0.05, "timeout_s": 0.5}).score_samples(["p"], ["r"])
    finally:
        for p in (proc, bad, slow):
            p.kill()
            p.wait()
    with pytest.raises(ScorerError, match="cannot reach"):  # the server is gone
        make_scorer({"kind": "http", "url": bad_url, "retries": 1, "backoff_s": 0.05}).score_samples(["p"], ["r"])


def test_proxies_trained_on_a_preference_file(own, tmp_path):
    cfg = _cfg(own, tmp_path, **{"proxy.source": "preferences", "proxy.scorers": None, "proxy.preferences.path": str(own["prefs"]),
                                 "proxy.n_members": "2", "proxy.epochs": "4", "proxy.lr": "2e-3", "proxy.batch_size": "8", "proxy.max_len": "32"})
    task = get_task(cfg)
    m = task.prepare()["proxy"]["metrics"]
    assert m["source"] == "preferences" and m["n_train_pairs"] + m["n_eval_pairs"] == 48 and len(m["members"]) == 2
    paths = task.resolve()
    from learner.models.reward import RewardModel

    rm = RewardModel.load(paths.proxies[0], max_len=32)
    head = task.render_prompt("q 1: film", 0)
    chosen, rejected = rm.score([head + "really quite a area"]), rm.score([head + "strength rhythm"])
    assert float(chosen) > float(rejected)
    assert all(x["heldout_pair_acc_vs_labels"] >= 0.75 for x in m["members"]), m["members"]
    with pytest.raises(AssetError, match="no column 'better'"):
        get_task(cfg.model_copy(update={"proxy": cfg.proxy.model_copy(update={
            "preferences": cfg.proxy.preferences.model_copy(update={"chosen_key": "better"})})})).prepare(rebuild=True)


def test_synthetic_gold_proxies_on_a_gpt2_policy_without_pad(own, tmp_path):
    """Gao et al. / Coste et al. on the user's task: pairs of pi_0 samples labelled by the user's gold, 25% flipped."""
    cfg = _cfg(own, tmp_path, **{"policy.name_or_path": str(own["gpt2"]), "proxy.source": "synthetic", "proxy.scorers": None,
                                 "proxy.n_members": "2", "proxy.n_pairs": "32", "proxy.n_eval_pairs": "20", "proxy.max_len": "32",
                                 "gold.scorer.function": "tasks.dataset.example_rewards:vowel_fraction"})
    task = get_task(cfg)
    m = task.prepare()["proxy"]["metrics"]
    assert m["source"] == "synthetic" and m["label_noise"] == 0.25 and len(m["members"]) == 2
    assert 0 < m["flipped_fraction"] < 0.6 and all(0 <= x["heldout_pair_acc_vs_gold"] <= 1 for x in m["members"])
    paths = task.resolve()
    assert len(paths.proxies) == 2 and all((p / "model.safetensors").exists() for p in paths.proxies)
    sample = json.loads((paths.proxies[0].parent / "pairs_sample.json").read_text())
    assert all(-0.3 <= x["gold_a"] <= 0.7 and -0.3 <= x["gold_b"] <= 0.7 for x in sample)  # the user's gold (vowel_fraction's range)
    again = get_task(cfg).prepare()["proxy"]
    assert again["built_at"] == task.prepare()["proxy"]["built_at"]  # reused: a second prepare builds nothing


def test_example_configs_validate_and_round_trip():
    """configs/examples/: one per scorer kind; each validates, and its saved config.json loads back to the same config."""
    from learner.config import PRESETS_DIR, config_from_dump

    files = sorted((PRESETS_DIR / "examples").glob("*.yaml"))
    kinds = set()
    for f in files:
        for cfg in load_config(str(f)).expand():
            assert cfg.task.name == "dataset"
            assert config_from_dump(json.loads(cfg.model_dump_json())) == cfg
            kinds |= {s.kind for s in cfg.proxy.scorers} | ({cfg.gold.scorer.kind} if cfg.gold.scorer else set()) | {cfg.proxy.source}
    assert {"hf_reward_model", "function", "http", "synthetic", "preferences", "scorers"} <= kinds



def test_best_of_n_on_an_own_task(own, tmp_path):
    """`tether bon`'s estimator on the user's task (in-process, transformers engine): the task's held-out prompts with
    their metadata, every member of a mixed ensemble, the user's gold."""
    from services.experiments.bon import run_bon

    cfg = _cfg(own, tmp_path, **{"runtime.mode": "local", "runtime.engine": "transformers", "task.data.metadata_keys": "[answer]",
                                 "proxy.scorers": json.dumps([{"kind": "function", "function": "tasks.dataset.example_rewards:word_count"},
                                                              {"kind": "hf_reward_model", "name_or_path": str(own["rm"]), "max_len": 64}])})
    get_task(cfg).prepare()
    res = run_bon(cfg, tmp_path / "bon", n_max=4, n_prompts=3, progress=False)
    assert {"noisy/mean", "noisy/wco", "noisy/uwo", "noisy/single"} <= set(res["curves"])
    z = np.load(tmp_path / "bon" / "samples.npz")
    assert z["gold"].shape == (3, 4) and np.isfinite(z["gold"]).all()
    same = _cfg(own, tmp_path, **{"runtime.mode": "local", "runtime.engine": "transformers",
                                  "proxy.scorers": json.dumps([{"kind": "function", "function": "tasks.dataset.example_rewards:distinct_words"}])})
    get_task(same).prepare()
    with pytest.raises(ValueError, match="gold is one of its proxies"):
        run_bon(same, tmp_path / "bon2", n_max=2, n_prompts=2, progress=False)
