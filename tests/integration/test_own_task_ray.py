"""A user's own task on the default path (Ray actors + vLLM), through the commands a user runs: `tether prepare` and
`tether train` (a Llama-style chat policy; an ensemble of a pretrained reward model, a Python function and an HTTP reward
server in its own process; a two-label classifier as the held-out gold; the exported policy), and `tether sweep` (a GPT-2-style
policy without a pad token, prompts from parquet, the synthetic-gold pipeline). A scorer outage and `--resume` (local mode,
beside these)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import own_task as o

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TETHER = [sys.executable, "-m", "services.cli"]
SMALL = {"generation": {"max_new_tokens": 10}, "ppo": {"batch_size": 8, "minibatch_size": 4, "epochs": 2, "lr": 1.0e-3},
         "train": {"iterations": 2, "eval_every": 1, "eval_prompts": 8, "threads": 1}, "runtime": {"checkpoint_every": 0}}


def _tether(*args, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), **(env or {})}
    out = subprocess.run([*TETHER, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"tether {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_own_chat_task_with_a_mixed_ensemble_through_tether_train(tmp_path):
    llama, rm, gold = o.llama_policy(tmp_path / "llama"), o.reward_model(tmp_path / "rm"), o.gold_classifier(tmp_path / "gold")
    prompts = o.write_jsonl(tmp_path / "prompts.jsonl", o.prompt_rows())
    server, url = o.start_reward_server("tasks.dataset.example_rewards:vowel_fraction", token="t0ken")
    try:
        cfg = {"name": "own", "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
               "task": {"name": "dataset", "data": {"path": str(prompts), "chat_template": True, "system_prompt": "Be brief.",
                                                    "metadata_keys": ["answer"], "max_prompt_tokens": 48}},
               "policy": {"name_or_path": str(llama)},
               "gold": {"kind": "scorer", "scorer": {"kind": "hf_reward_model", "name_or_path": str(gold), "label": "POSITIVE", "max_len": 64}},
               "proxy": {"source": "scorers", "scorers": [
                   {"kind": "hf_reward_model", "name_or_path": str(rm), "chat_template": True, "max_len": 64, "name": "rm"},
                   {"kind": "function", "function": "tasks.dataset.example_rewards:word_count", "name": "words"},
                   {"kind": "http", "url": url, "token_env": "TETHER_TEST_RM_TOKEN", "name": "remote"}]},
               **SMALL}
        path = tmp_path / "own.yaml"
        path.write_text(yaml.safe_dump(cfg))
        prep = _tether("prepare", str(path))
        assert "prompts:" in prep.stdout and "dropped as too long" in prep.stdout
        _tether("train", str(path), env={"TETHER_TEST_RM_TOKEN": "t0ken"})
    finally:
        server.kill()
        server.wait()
    run = next((tmp_path / "runs").glob("*-own/main"))
    steps = [r for r in _rows(run) if "loss/policy" in r]
    assert len(steps) == 2 and all(r["rollout/behaviour_logp_gap"] < 1e-3 for r in steps)  # vLLM sampled the learner's weights
    assert steps[-1]["kl/from_init"] > 0 and all(f"reward/proxy_member_{i}" in steps[-1] for i in range(3))
    evals = [r for r in _rows(run) if "eval/gold_mean" in r]  # the gold-free guard reads the mixed ensemble too
    assert evals and all("guard/disagreement" in r and "guard/rank_agreement" in r for r in evals)
    # every evaluation's samples: the chat-rendered prompt, the user's prompt and metadata, each member's own score
    from tasks.dataset.example_rewards import vowel_fraction, word_count

    samples = [json.loads(x) for x in sorted((run / "samples").glob("step-*.jsonl"))[-1].read_text().splitlines()]
    assert len(samples) == 8
    for s in samples:
        assert s["prompt"].startswith("<s><|system|>Be brief.<|end|><|user|>") and s["prompt"].endswith("<|assistant|>")
        assert set(s["meta"]) == {"prompt", "answer"} and s["prompt"].endswith(s["meta"]["prompt"] + "<|end|><|assistant|>")
        rm_score, words, remote = s["proxy_members"]
        assert words == pytest.approx(word_count([s["meta"]["prompt"]], [s["response"]])[0], abs=1e-5)
        assert remote == pytest.approx(vowel_fraction([s["meta"]["prompt"]], [s["response"]])[0], abs=1e-5)  # through HTTP
        assert s["proxy"] == pytest.approx((rm_score + words + remote) / 3, abs=1e-5) and s["gold"] is not None
    # the policy a user takes away: a Hugging Face folder equal to the learner's weights, loadable and generating
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    exported = run / "policy"
    m = AutoModelForCausalLM.from_pretrained(str(exported))
    learner = torch.load(str(sorted((run / "checkpoints").glob("step-*"))[-1] / "learner.pt"), weights_only=False)["model"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, learner[f"lm.{k}"]), k
    assert not torch.equal(m.lm_head.weight, AutoModelForCausalLM.from_pretrained(str(llama)).lm_head.weight)  # it trained
    tok = AutoTokenizer.from_pretrained(str(exported))
    assert tok.chat_template and GenerationConfig.from_pretrained(str(exported)).eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert m.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]
    # tether export of the same checkpoint gives the same weights
    _tether("export", str(run), "--out", str(tmp_path / "exported"))
    m2 = AutoModelForCausalLM.from_pretrained(str(tmp_path / "exported"))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    bad = _tether("export", str(run), "--step", "7", check=False)
    assert bad.returncode != 0 and "no checkpoint of step 7" in bad.stderr


def test_synthetic_gold_study_on_own_task_through_tether_sweep(tmp_path):
    """GPT-2-style policy with no pad token (before: `tether prepare` died with a TypeError in torch.full), prompts from
    parquet, the gold a Python function, two proxies trained on its labels with 25% flipped; then a sweep through Ray + vLLM
    (one cell: the sweep machinery's cells, skips and resumes are tests/integration/test_sweep.py's)."""
    import datasets

    gpt2 = o.gpt2_policy(tmp_path / "gpt2")
    datasets.Dataset.from_list(o.prompt_rows()).to_parquet(str(tmp_path / "prompts.parquet"))
    base = {"name": "synth", "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
            "task": {"name": "dataset", "data": {"path": str(tmp_path / "prompts.parquet"), "max_prompt_tokens": 48}},
            "policy": {"name_or_path": str(gpt2)},
            "gold": {"kind": "scorer", "scorer": {"kind": "function", "function": "tasks.dataset.example_rewards:vowel_fraction"}},
            "proxy": {"source": "synthetic", "n_members": 2, "n_pairs": 32, "n_eval_pairs": 20, "epochs": 1, "batch_size": 8,
                      "n_layer": 1, "max_len": 32, "label_noise": 0.25},
            "kl": {"mode": "fixed"}, **SMALL}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    prep = _tether("prepare", str(tmp_path / "base.yaml"))
    assert "proxy:  2 members, held-out pair agreement with gold" in prep.stdout
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"name": "own", "base": "base.yaml", "seeds": [0],
                                                          "methods": {"kl_a": {"config": {"kl": {"coef": 0.05}}}}}))
    _tether("sweep", str(tmp_path / "sweep.yaml"), timeout=1200)
    cells = sorted((tmp_path / "runs" / "sweep-own").rglob("metrics.jsonl"))
    assert len(cells) == 1
    for f in cells:
        steps = [r for r in _rows(f.parent) if "loss/policy" in r]
        assert len(steps) == 2 and all(r["rollout/behaviour_logp_gap"] < 1e-3 for r in steps)  # vLLM + GPT-2's tied head
        assert {"reward/proxy_member_0", "reward/proxy_member_1", "ensemble/std", "reward/gold_mean"} <= set(steps[-1])
        assert (f.parent / "policy" / "model.safetensors").exists()


def test_a_scorer_outage_stops_the_run_and_resume_finishes_it(tmp_path):
    """The HTTP scorer's server goes away mid-run: the run fails with the scorer's name, keeps what it logged, and
    `tether train --resume` finishes it once the server is back (local mode: the outage path, not the actors, is tested)."""
    llama = o.llama_policy(tmp_path / "llama")
    prompts = o.write_jsonl(tmp_path / "prompts.jsonl", o.prompt_rows())
    port = o.free_port()
    server, url = o.start_reward_server("own_task:paced_vowels", port=port)  # 1 s a call: the run is mid-way when the server goes
    cfg = {"name": "outage", "data_dir": str(tmp_path / "data"), "runs_dir": str(tmp_path / "runs"),
           "task": {"name": "dataset", "data": {"path": str(prompts), "max_prompt_tokens": 48}}, "policy": {"name_or_path": str(llama)},
           "gold": {"kind": "scorer", "scorer": {"kind": "function", "function": "tasks.dataset.example_rewards:distinct_words"}},
           "proxy": {"source": "scorers", "scorers": [{"kind": "http", "url": url, "retries": 2, "backoff_s": 0.2, "timeout_s": 5, "name": "remote"}]},
           **{**SMALL, "train": {**SMALL["train"], "iterations": 8, "eval_every": 4}, "runtime": {"mode": "local", "engine": "transformers",
                                                                                                    "checkpoint_every": 1}}}
    path = tmp_path / "outage.yaml"
    path.write_text(yaml.safe_dump(cfg))
    _tether("prepare", str(path))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    train = subprocess.Popen([*TETHER, "train", str(path)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        t0 = time.time()
        while time.time() - t0 < 300 and not list((tmp_path / "runs").glob("*-outage/main/checkpoints/step-000002")):
            time.sleep(0.2)
        server.kill()
        server.wait()
        _, err = train.communicate(timeout=300)
    finally:
        train.kill()
    assert train.returncode != 0 and "scorer remote:" in err and "tether train --resume" in err
    run = next((tmp_path / "runs").glob("*-outage/main"))
    logged = [r["step"] for r in _rows(run) if "loss/policy" in r]
    assert 2 <= len(logged) < 8 and json.loads((run / "status.json").read_text())["state"] == "failed"
    server, _ = o.start_reward_server("own_task:paced_vowels", port=port)
    try:
        _tether("train", "--resume", str(run.parent))
    finally:
        server.kill()
        server.wait()
    steps = [r["step"] for r in _rows(run) if "loss/policy" in r]
    assert steps == list(range(1, 9)) and json.loads((run / "status.json").read_text())["state"] == "finished"
