"""The learn phase's speed-ups (learner.models.policy.LearnSpeedups) change no result beyond float rounding: each is
compared with the path without it on the tiny real model, and a PPO step with all of them against one with none."""
import copy
import dataclasses

import pytest
import torch
from transformers import AutoTokenizer

from learner.learners.ppo import PPOLearner
from learner.models import policy as P
from learner.models.engine import TransformersEngine
from learner.models.policy import PolicyWithValue, load_policy, pad_batch, response_logprobs, trim_padding
from learner.types import ScoredRollouts


@pytest.fixture
def speedups():
    """Restore the module's switches after a test flips them."""
    saved = dataclasses.asdict(P.SPEEDUPS)
    yield P.SPEEDUPS
    P.SPEEDUPS.__dict__.update(saved)


def _batch(paths, prompts=("A", "This movie was not what I", "Hi"), lens=(5, 3, 4)):
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    pids = [[tok.eos_token_id, *tok.encode(p, add_special_tokens=False)] for p in prompts]
    rids = [[7 + i + j for j in range(n)] for i, n in enumerate(lens)]  # ragged responses: right padding too
    return pad_batch(pids, rids, tok.pad_token_id), tok


def test_response_logits_only_gives_the_same_logprobs_values_and_logits(tiny_assets, speedups):
    _, _, paths = tiny_assets
    b, _ = _batch(paths)
    lm = load_policy(paths.policy).eval()
    pol = PolicyWithValue(copy.deepcopy(lm), separate_critic=True).eval()
    torch.nn.init.normal_(pol.value_head.weight)
    out = {}
    for on in (False, True):
        speedups.response_logits_only = on
        with torch.no_grad():
            out[on] = (*response_logprobs(pol, b, with_values=True, return_logits=True), *response_logprobs(lm, b, return_logits=True))
    R = b["response_mask"].shape[1]
    for a, c in zip(out[False], out[True]):
        assert a.shape == c.shape and a.shape[1] == R
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)
    # and the LM head really ran on fewer positions: R + 1 of P + R
    speedups.response_logits_only = True
    assert P.lm_keep_kwargs(lm, R + 1) == {"logits_to_keep": R + 1}
    assert lm(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **P.lm_keep_kwargs(lm, R + 1)).logits.shape[1] == R + 1


def test_an_lm_without_logits_to_keep_gets_every_position(tiny_assets, speedups):
    class Plain(torch.nn.Module):  # a causal LM whose forward has no logits_to_keep argument
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask, position_ids=None):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)

    _, _, paths = tiny_assets
    b, _ = _batch(paths)
    lm = load_policy(paths.policy).eval()
    assert P.lm_keep_kwargs(Plain(lm), 5) == {}
    with torch.no_grad():
        torch.testing.assert_close(response_logprobs(Plain(lm), b), response_logprobs(lm, b), rtol=1e-5, atol=1e-5)


def test_trim_padding_drops_only_columns_that_are_padding_in_every_row(tiny_assets):
    _, _, paths = tiny_assets
    b, _ = _batch(paths)
    lm = load_policy(paths.policy).eval()
    short = {k: (v[[0, 2]] if isinstance(v, torch.Tensor) else v) for k, v in b.items()}  # the rows with short prompts
    t = trim_padding(short)
    assert t["input_ids"].shape[1] < short["input_ids"].shape[1] and t["prompt_width"] < short["prompt_width"]
    assert bool(t["attention_mask"][:, 0].any())  # the first kept column is real in some row
    assert t["input_ids"].shape[1] - t["prompt_width"] == short["input_ids"].shape[1] - short["prompt_width"]  # responses kept
    with torch.no_grad():
        torch.testing.assert_close(response_logprobs(lm, t), response_logprobs(lm, short), rtol=1e-5, atol=1e-5)
    assert trim_padding(b)["input_ids"].shape == b["input_ids"].shape  # the longest prompt's rows: nothing to drop
    # a one-token prompt keeps position P - 1 (its logits predict the first response token)
    one = pad_batch([[0]], [[5, 6]], 0)
    assert trim_padding(one)["prompt_width"] == 1


def _ppo_step(tiny_assets, seed_data):
    cfg, _, paths = tiny_assets
    cfg = cfg.model_copy(update={"ppo": cfg.ppo.model_copy(update={"lr": 1e-3, "batch_size": 8, "minibatch_size": 4, "epochs": 2})})
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    lm = load_policy(paths.policy)
    eng = TransformersEngine(copy.deepcopy(lm), tok, cfg.generation)
    r = eng.generate(["Great film", "Awful", "It was", "I loved this movie because"] * 2, seed=seed_data)
    s = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i % 3) for i in range(8)], [0.0] * 8)
    learner = PPOLearner(cfg, lm, pad_id=tok.pad_token_id)
    stats = [learner.step(s) for _ in range(2)]
    return stats, {k: v.detach().clone() for k, v in learner.model.state_dict().items()}, learner


def test_a_ppo_step_with_every_speedup_equals_one_with_none(tiny_assets, speedups):
    """Two PPO iterations from the same weights and batch: the same statistics and weights up to float rounding."""
    speedups.__dict__.update(dataclasses.asdict(P.LearnSpeedups(False, False, False, False)))
    stats_off, w_off, l_off = _ppo_step(tiny_assets, 3)
    speedups.__dict__.update(dataclasses.asdict(P.LearnSpeedups()))
    stats_on, w_on, l_on = _ppo_step(tiny_assets, 3)
    assert l_on.opt.param_groups[0].get("fused") is True and not l_off.opt.param_groups[0].get("fused")
    for a, b in zip(stats_off, stats_on):
        for k in a:
            if k.startswith("time_s/"):
                continue
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), k
    for k in w_off:
        torch.testing.assert_close(w_on[k], w_off[k], rtol=1e-4, atol=1e-6)


def test_bf16_on_the_cpu_uses_eager_attention_and_fp32_keeps_sdpa(tiny_assets):
    from learner.learners import make_learner

    cfg, _, paths = tiny_assets
    for prec, attn in (("fp32", "sdpa"), ("bf16", "eager")):
        c = cfg.model_copy(deep=True)
        c.runtime.learner.precision = prec
        lrn = make_learner(c, paths.policy, device="cpu")  # a device name works as well as a torch.device
        got = {lrn.model.lm.config._attn_implementation, lrn.model.critic.config._attn_implementation, lrn.ref.config._attn_implementation}
        assert got == {attn}, (prec, got)
