"""actors.vllm_engine + actors.weight_sync against real vLLM (CPU build), real Ray and the transformers reference.

One VLLMEngine for the whole module (start-up is ~25 s); every test loads the weights it needs first
(an in-place reload of the tiny model takes ~10 ms), so the tests do not depend on their order.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from actors.weight_sync import WEIGHTS_FILE, TmpfsWeightSync, make_weight_sync
from learner.config import GenerationConfig
from learner.models.tokenizer import cut_at_stop

pytestmark = pytest.mark.slow

PROMPTS = ["This movie was", "I hated", "The acting", "Worst film", "A great", "Honestly,", "The plot of this", "I"]
MANY_PROMPTS = [f"{a} {b}" for a in ("This movie", "The film", "My wife", "I think") for b in ("was", "is not", "made me", "had", "looked", "felt", "seemed", "never")]
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def policy(tiny_assets):
    from learner.models.policy import load_policy

    _, _, paths = tiny_assets
    return load_policy(paths.policy).eval()


@pytest.fixture(scope="module")
def tok(tiny_assets):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_assets[2].policy))


@pytest.fixture(scope="module")
def engine(tiny_assets):
    from actors.vllm_engine import VLLMEngine

    eng = VLLMEngine(tiny_assets[2].policy, GenerationConfig(max_new_tokens=NEW_TOKENS), seed=0, kv_cache_gib=1, run_id="pytest-vllm")
    yield eng
    eng.close()
    assert not eng._sync.folder.exists()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=1, include_dashboard=False, object_store_memory=200 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def perturbed(policy):
    """A copy of the policy with seeded noise (0.3 std per tensor): enough to change greedy outputs."""
    import copy

    m = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in m.parameters():  # parameters() lists a tied embedding once, so the tie survives
            p.add_(0.3 * p.std() * torch.randn(p.shape, generator=g))
    return m


@contextlib.contextmanager
def generation(engine, **kw):
    old = engine.gen
    engine.gen = GenerationConfig(max_new_tokens=NEW_TOKENS, **kw)
    try:
        yield
    finally:
        engine.gen = old


def vllm_greedy(engine) -> list[list[int]]:
    with generation(engine, top_k=1):  # top-k 1 = argmax, whatever the seed
        return engine.generate(PROMPTS, seed=0).response_ids


@torch.no_grad()
def hf_greedy(model, tok) -> list[list[int]]:
    """transformers generate, do_sample=False, one unpadded prompt at a time; cut after the first EOS."""
    from learner.models.tokenizer import encode_prompts

    out = []
    for p in encode_prompts(tok, PROMPTS):
        ids = torch.tensor([p])
        seq = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=NEW_TOKENS, pad_token_id=tok.pad_token_id,
        )
        resp = seq[0, len(p):].tolist()
        out.append(resp[: cut_at_stop(resp, [tok.eos_token_id])])
    return out


def test_greedy_matches_transformers(engine, policy, tok):
    engine.load_weights(policy.state_dict(), version=0)
    assert vllm_greedy(engine) == hf_greedy(policy, tok)


def test_weight_update_changes_output_and_matches_transformers(engine, policy, perturbed, tok):
    engine.load_weights(policy.state_dict(), version=0)
    before = vllm_greedy(engine)
    sync = make_weight_sync("tmpfs", run_id="pytest-update")
    try:
        handle = sync.send(perturbed.state_dict().items(), version=5)
        assert engine.receive_weights(sync, handle) == 5
    finally:
        sync.close()
    assert engine.policy_version == 5
    after = vllm_greedy(engine)
    assert after != before
    assert after == hf_greedy(perturbed, tok)
    with generation(engine):
        assert engine.generate(PROMPTS[:2], seed=1).policy_version == 5  # rollouts are stamped


def _sampling_logprobs(logits: torch.Tensor, tokens: torch.Tensor, *, eos: int, temperature: float, top_k: int) -> torch.Tensor:
    """log p(token) under the distribution vLLM samples from: /T, then top-k. (B, R, V) -> (B, R)"""
    x = logits / temperature
    if top_k:
        kth = x.topk(top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    return torch.log_softmax(x, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature,top_k", [(1.0, 0), (0.7, 20)])
def test_behaviour_logprobs_match_learner_forward(engine, policy, tok, temperature, top_k):
    from learner.models.policy import pad_batch, response_logprobs

    engine.load_weights(policy.state_dict(), version=3)
    with generation(engine, temperature=temperature, top_k=top_k):
        r = engine.generate(MANY_PROMPTS, seed=7)
    assert r.engine == "vllm" and r.policy_version == 3
    assert all(1 <= len(x) <= NEW_TOKENS for x in r.response_ids)
    batch = pad_batch(r.prompt_ids, r.response_ids, tok.pad_token_id)
    with torch.no_grad():
        learner_lp, logits = response_logprobs(policy, batch, return_logits=True)  # (B, R), (B, R, V)
    R = max(len(x) for x in r.behaviour_logprobs)
    vllm_lp = torch.tensor([x + [0.0] * (R - len(x)) for x in r.behaviour_logprobs])  # (B, R), right-padded
    P = batch["prompt_width"]
    mask = batch["response_mask"].bool()
    expected = _sampling_logprobs(logits, batch["input_ids"][:, P : P + mask.shape[1]], eos=tok.eos_token_id, temperature=temperature, top_k=top_k)
    # vLLM returns processed log-probs (logprobs_mode="processed_logprobs"): those of the sampling
    # distribution, temperature and top-k included. Measured max |diff| (float32, 32 prompts x 12
    # tokens): 9.5e-7 at T=1 and at T=0.7/top-k 20, so 1e-4 leaves a 100x margin.
    diff = (vllm_lp - expected).abs()[mask]
    assert diff.max().item() < 1e-4
    if temperature == 1.0 and not top_k:
        # At T=1 with EOS allowed, vLLM's behaviour log-probs are the learner's plain log pi (PPO's old
        # log-probs) to float32 precision.
        assert (vllm_lp - learner_lp).abs()[mask].max().item() < 1e-4
    else:
        # At T != 1 the sampling distribution is not pi: raw log-probs would be wrong as behaviour log-probs
        # (measured max |diff| 1.5 nats at T=0.7, top-k 20).
        assert (vllm_lp - learner_lp).abs()[mask].max().item() > 1e-2


def test_object_store_round_trip_is_exact(ray_local, policy):
    sync = make_weight_sync("object_store", run_id="pytest-os")
    sd = policy.state_dict()
    extra = {"bf16.weight": torch.randn(3, 5).to(torch.bfloat16), "int.buf": torch.arange(7)}
    handle = sync.send([*sd.items(), *extra.items()], version=9)
    assert isinstance(handle, ray_local.ObjectRef)
    got, version = sync.receive(handle)
    assert version == 9
    for name, t in [*sd.items(), *extra.items()]:
        assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
    got["model.norm.weight"].add_(1.0)  # writable, and a private copy: the learner's tensor is untouched
    assert not torch.equal(got["model.norm.weight"], sd["model.norm.weight"])
    resolved, v2 = sync.receive(ray_local.get(handle))  # what a remote method receives as a top-level argument
    assert v2 == 9 and torch.equal(resolved["lm_head.weight"], sd["model.embed_tokens.weight"])


def test_object_store_reload_equals_tmpfs_reload(ray_local, engine, policy, perturbed):
    tmpfs = make_weight_sync("tmpfs", run_id="pytest-cmp")
    store = make_weight_sync("object_store", run_id="pytest-cmp")
    try:
        engine.receive_weights(tmpfs, tmpfs.send(perturbed.state_dict().items(), version=11))
        via_tmpfs = vllm_greedy(engine)
        engine.load_weights(policy.state_dict(), version=0)  # back to the base weights first
        assert vllm_greedy(engine) != via_tmpfs
        assert engine.receive_weights(store, store.send(perturbed.state_dict().items(), version=12)) == 12
        assert engine.policy_version == 12
        assert vllm_greedy(engine) == via_tmpfs
    finally:
        tmpfs.close()
        store.close()
    assert not tmpfs.folder.exists() and (store._local is None or not store._local.folder.exists())


def _sampled(engine):
    with generation(engine, temperature=1.0):
        r = engine.generate(MANY_PROMPTS, seed=21)
    return r.response_ids, r.behaviour_logprobs


def test_fast_cpu_reload_equals_vllms_reload_and_a_cold_start(engine, policy, perturbed, tiny_assets, tmp_path):
    """actors/vllm_reload.py against vLLM's own reload_weights and against an engine started from the same weights: the
    same tokens and the same behaviour log-probs, exactly (the same CPU kernels on the same weights and seeds)."""
    from actors.vllm_engine import VLLMEngine

    engine.load_weights(policy.state_dict(), version=0)
    assert engine.last_reload_path == "fast"
    engine.load_weights(perturbed.state_dict(), version=1)
    assert engine.last_reload_path == "fast"
    fast = _sampled(engine)
    engine.load_weights(policy.state_dict(), version=2)
    assert _sampled(engine) != fast
    engine.fast_reload = False
    try:
        engine.load_weights(perturbed.state_dict(), version=3)
        assert engine.last_reload_path == "vllm"
        assert _sampled(engine) == fast
    finally:
        engine.fast_reload = True
    folder = tmp_path / "perturbed"
    perturbed.save_pretrained(folder)
    for f in Path(tiny_assets[2].policy).iterdir():  # the tokenizer's files
        if f.name.startswith("tokenizer"):
            (folder / f.name).write_bytes(f.read_bytes())
    cold = VLLMEngine(folder, GenerationConfig(max_new_tokens=NEW_TOKENS), seed=0, kv_cache_gib=1, run_id="pytest-cold")
    try:
        assert _sampled(cold) == fast
    finally:
        cold.close()


def test_engine_keeps_its_weights_when_the_slot_it_read_is_rewritten(engine, policy, perturbed, tok):
    """The fast reload packs the weights into the engine's own kernels: no layer keeps pointing into the mapped file, so a
    later write into the same slot (one slot here) changes nothing until the engine is told to load it."""
    sync = TmpfsWeightSync(run_id="pytest-alias", keep=1)
    try:
        assert engine.receive_weights(sync, sync.send(perturbed.state_dict().items(), version=7)) == 7
        assert engine.last_reload_path == "fast"
        h = sync.send(policy.state_dict().items(), version=8)  # the same file, rewritten in place
        assert vllm_greedy(engine) == hf_greedy(perturbed, tok)
        assert engine.receive_weights(sync, h) == 8
        assert vllm_greedy(engine) == hf_greedy(policy, tok)
    finally:
        sync.close()


def test_tmpfs_keeps_lm_head_separate_and_rewrites_its_slots(policy, tmp_path):
    from safetensors import safe_open

    sd = policy.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["model.embed_tokens.weight"].data_ptr()  # the tiny policy is tied
    sync = TmpfsWeightSync(run_id="pytest-tmpfs", root=tmp_path, keep=2)
    handles = [sync.send(sd.items(), version=v) for v in range(1, 5)]
    assert sync.versions() == [3, 4]
    assert sorted(p.name for p in sync.folder.glob("slot*")) == ["slot0", "slot1"]  # two files, rewritten in turn
    with safe_open(handles[3]["file"], framework="pt") as f:  # a plain safetensors file: any reader opens it
        assert "lm_head.weight" in f.keys()
        assert torch.equal(f.get_tensor("model.norm.weight"), sd["model.norm.weight"])
    got, version = sync.receive(handles[3])
    assert version == 4 and torch.equal(got["lm_head.weight"], sd["model.embed_tokens.weight"])
    # Sent without lm_head (named_parameters() drops the tied copy): the output layer is still written.
    h5 = sync.send(dict(policy.named_parameters()).items(), version=5)
    got, _ = sync.receive(h5)
    assert torch.equal(got["lm_head.weight"], sd["model.embed_tokens.weight"])
    with pytest.raises(FileNotFoundError, match="now holds version 5, not 1"):  # slot0 was rewritten since
        sync.receive(handles[0])
    sync.close()
    assert not sync.folder.exists()
    with pytest.raises(FileNotFoundError, match="closed"):
        sync.receive(h5)


def test_unknown_backend_lists_names():
    with pytest.raises(ValueError, match=r"'nccl'.*object_store, tmpfs"):
        make_weight_sync("nccl")
