"""Devices: every role's models and batches on the device it resolves to (runtime.<role>.device), the learner's
bf16 autocast and gradient checkpointing. The device logic is tested here on the CPU; the CUDA tests at the end
run only where a GPU is visible (they are skipped on CPU-only machines, as on the 2-core CI machine)."""
import copy
import dataclasses
import math

import pytest
import torch
from transformers import AutoTokenizer

from learner.config import ConfigError, load_config
from learner.learners import make_learner
from learner.models.device import DeviceError, autocast, resolve_device
from learner.models.engine import TransformersEngine
from learner.models.policy import compile_bodies
from learner.types import ScoredRollouts

CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU (none visible here)")


def test_resolve_device_rules():
    assert resolve_device("cpu", 1) == torch.device("cpu")
    assert resolve_device("auto", 0) == torch.device("cpu")  # no GPUs reserved: the CPU even when CUDA exists
    assert resolve_device("auto", 1).type == ("cuda" if CUDA else "cpu")
    with pytest.raises(DeviceError, match="one of auto, cpu, cuda"):
        resolve_device("gpu", 1)
    if not CUDA:
        with pytest.raises(DeviceError, match=r"runtime.learner.device is 'cuda' but this process sees no GPU"):
            resolve_device("cuda", 1, role="learner")


def test_device_and_precision_are_config_fields_with_readable_errors():
    cfg = load_config("tiny", ["runtime.learner.device=cpu", "runtime.learner.precision=bf16", "runtime.gold.device=auto"])
    assert cfg.runtime.learner.device == "cpu" and cfg.runtime.learner.precision == "bf16"
    with pytest.raises(ConfigError, match="runtime.learner.device"):
        load_config("tiny", ["runtime.learner.device=gpu"])
    with pytest.raises(ConfigError, match="runtime.reward.precision"):  # a learner-only option
        load_config("tiny", ["runtime.reward.precision=bf16"])
    with pytest.raises(ValueError, match="fp32, bf16 or auto"):
        autocast(torch.device("cpu"), "fp16")


def _learner_and_batch(tiny_assets, **learner_over):
    cfg, _, paths = tiny_assets
    over = {"ppo": {"batch_size": 8, "minibatch_size": 4, "epochs": 1, "lr": 1e-3}}
    upd = {k: getattr(cfg, k).model_copy(update=v) for k, v in over.items()}
    rt = cfg.runtime.model_copy(update={"learner": cfg.runtime.learner.model_copy(update=learner_over)})
    cfg = cfg.model_copy(update={**upd, "runtime": rt})
    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    eng = TransformersEngine.from_path(paths.policy, cfg.generation)
    r = eng.generate(["Great film", "Awful", "I think", "The plot"] * 2, seed=0)
    scored = ScoredRollouts(r, [[float(i)] for i in range(8)], [float(i) for i in range(8)], [0.0] * 8)
    return cfg, tok, paths, scored


def _step(cfg, paths, scored, device=None):
    learner = make_learner(cfg, paths.policy, device=device)
    with learner.autocast():
        stats = learner.step(scored)
    return learner, stats


def test_bf16_autocast_changes_the_forward_numerics_but_not_the_stored_precision(tiny_assets):
    cfg32, _, paths, scored = _learner_and_batch(tiny_assets)
    cfg16, *_ = _learner_and_batch(tiny_assets, precision="bf16")
    l32, s32 = _step(cfg32, paths, scored)
    l16, s16 = _step(cfg16, paths, scored)
    assert all(p.dtype == torch.float32 for p in l16.model.parameters())  # weights, grads and Adam stay fp32
    assert all(v.dtype == torch.float32 for st in l16.opt.state.values() for v in st.values() if v.dim())
    assert s16["loss/policy"] != s32["loss/policy"]  # autocast was on: bf16 matmuls round differently
    for k in ("loss/value", "kl/to_ref", "ppo/approx_kl"):
        assert s16[k] == pytest.approx(s32[k], rel=0.1, abs=5e-3), k
    assert l16.device == torch.device("cpu")


def test_auto_precision_is_bf16_where_the_device_has_it_natively(tiny_assets, monkeypatch):
    """runtime.learner.precision auto: bf16 on a CPU with AVX512-BF16 or AMX (this project's machine) or a bf16 CUDA GPU, fp32
    elsewhere; the learner's step with auto is the step of what it resolves to, bit for bit."""
    from learner.models import device as dev

    cpu = torch.device("cpu")
    assert dev.native_bf16(cpu, {"avx2", "avx512f", "avx512_bf16"}) and dev.native_bf16(cpu, {"amx_bf16", "amx_tile"})
    assert not dev.native_bf16(cpu, {"avx2", "avx512f"}) and not dev.native_bf16(torch.device("meta"), {"avx512_bf16"})
    assert dev.resolve_precision("fp32", cpu) == "fp32" and dev.resolve_precision("bf16", cpu) == "bf16"
    for flags, want in (({"avx512_bf16"}, "bf16"), ({"avx2"}, "fp32")):
        monkeypatch.setattr(dev, "_cpu_flags", lambda flags=flags: set(flags))
        assert dev.resolve_precision("auto", cpu) == want
        assert isinstance(dev.autocast(cpu, "auto"), torch.autocast) == (want == "bf16")
    monkeypatch.undo()
    here = dev.resolve_precision("auto", cpu)  # what this machine resolves to (bf16 on AVX512-BF16)
    cfg_auto, _, paths, scored = _learner_and_batch(tiny_assets, precision="auto")
    cfg_here, *_ = _learner_and_batch(tiny_assets, precision=here)
    seeded = lambda st: {k: v for k, v in st.items() if not k.startswith("time_s/")}  # noqa: E731
    assert seeded(_step(cfg_auto, paths, scored)[1]) == seeded(_step(cfg_here, paths, scored)[1])
    assert load_config("tiny", ["runtime.learner.precision=auto"]).runtime.learner.precision == "auto"
    with pytest.raises(ConfigError, match="runtime.learner.precision"):
        load_config("tiny", ["runtime.learner.precision=fp16"])


def test_bf16_forwards_after_an_optimiser_step_see_the_updated_weights(tiny_assets):
    """The learner wraps a whole iteration (every minibatch's update) in one autocast context. autocast's cast cache
    kept each weight's bf16 copy from its first use there, so every later forward ran on the old weights: PPO's
    ratio stayed 1 and its clip never engaged. Failed before cache_enabled=False."""
    from learner.models.policy import optimizer_step, response_logprobs

    cfg16, _, paths, scored = _learner_and_batch(tiny_assets, precision="bf16")
    lrn = make_learner(cfg16, paths.policy)
    r = scored.rollouts
    batch = lrn.batch(r.prompt_ids, r.response_ids)
    with lrn.autocast():
        with torch.no_grad():
            before = response_logprobs(lrn.model.lm, batch)
        loss = -response_logprobs(lrn.model.lm, batch).mean()
        optimizer_step(lrn.opt, loss, lrn.model.parameters(), 1.0)
        with torch.no_grad():
            after = response_logprobs(lrn.model.lm, batch)
    with torch.no_grad(), lrn.autocast():
        fresh = response_logprobs(lrn.model.lm, batch)  # a new context casts the current weights
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)
    # and through a PPO iteration of 2 minibatches: the second minibatch's ratio moved away from 1
    _, s16 = _step(cfg16, paths, scored)
    assert s16["ppo/approx_kl"] > 0
    with torch.no_grad(), lrn.autocast():  # the value head runs in float32 under autocast
        _, values = response_logprobs(lrn.model, batch, with_values=True)
    assert values.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_update(tiny_assets):
    cfg, _, paths, scored = _learner_and_batch(tiny_assets)
    cfg_ck, *_ = _learner_and_batch(tiny_assets, gradient_checkpointing=True)
    plain, s_plain = _step(cfg, paths, scored)
    ck, s_ck = _step(cfg_ck, paths, scored)
    assert ck.model.lm.is_gradient_checkpointing and not plain.model.lm.is_gradient_checkpointing
    assert not ck.ref.is_gradient_checkpointing  # the frozen reference never runs a backward pass
    for (n, a), b in zip(plain.model.named_parameters(), ck.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=n)
    assert s_ck["loss/policy"] == pytest.approx(s_plain["loss/policy"], rel=1e-5, abs=1e-7)


def test_compile_gives_the_same_update_and_keeps_the_weights_names(tiny_assets):
    """runtime.learner.compile: the policy, value network and reference bodies compiled in place (torch.compile,
    dynamic shapes); one PPO step equals the eager one to float rounding, and the state dict's names are unchanged
    (weight sync, checkpoints and Elastic Reset read them). A second batch of other lengths reuses the graph."""
    cfg, _, paths, scored = _learner_and_batch(tiny_assets)
    cfg_c, *_ = _learner_and_batch(tiny_assets, compile=True)
    plain, s_plain = _step(cfg, paths, scored)
    comp, s_comp = _step(cfg_c, paths, scored)
    bodies = [comp.model.lm.model, comp.model.critic, comp.ref.model]
    assert all(m._compiled_call_impl is not None for m in bodies)
    assert plain.model.lm.model._compiled_call_impl is None
    assert list(comp.model.state_dict()) == list(plain.model.state_dict())
    for (n, a), b in zip(plain.model.named_parameters(), comp.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=n)
    for k in ("loss/policy", "loss/value", "kl/to_ref"):
        assert s_comp[k] == pytest.approx(s_plain[k], rel=1e-4, abs=1e-6), k
    r = scored.rollouts
    short = dataclasses.replace(scored, rollouts=dataclasses.replace(
        r, response_ids=[x[:3] for x in r.response_ids], behaviour_logprobs=[x[:3] for x in r.behaviour_logprobs]))
    with comp.autocast():
        assert math.isfinite(comp.step(short)["loss/policy"])
    with pytest.raises(ValueError, match="no transformer body"):
        compile_bodies(torch.nn.Linear(2, 2))


# -- on a GPU ------------------------------------------------------------------------------------------------
@needs_gpu
def test_learner_on_cuda_keeps_every_tensor_there_and_matches_the_cpu_step(tiny_assets):
    cfg, _, paths, scored = _learner_and_batch(tiny_assets, device="cuda", num_gpus=1)
    gpu, s_gpu = _step(cfg, paths, scored)
    assert gpu.device.type == "cuda"
    assert all(p.device.type == "cuda" for p in [*gpu.model.parameters(), *gpu.ref.parameters()])
    assert all(v.device.type == "cuda" for st in gpu.opt.state.values() for v in st.values() if torch.is_tensor(v) and v.dim())
    cpu, s_cpu = _step(cfg, paths, scored, device=torch.device("cpu"))
    for k in ("loss/policy", "loss/value", "kl/to_ref"):
        assert s_gpu[k] == pytest.approx(s_cpu[k], rel=1e-3, abs=1e-5), k
    sd = gpu.state_dict()
    assert "cuda_rng" in sd
    again = make_learner(cfg, paths.policy)
    again.load_state_dict(copy.deepcopy(sd))
    assert all(p.device.type == "cuda" for p in again.model.parameters())


@needs_gpu
def test_bf16_autocast_on_cuda(tiny_assets):
    cfg, _, paths, scored = _learner_and_batch(tiny_assets, device="cuda", num_gpus=1, precision="bf16")
    learner, stats = _step(cfg, paths, scored)
    assert all(math.isfinite(v) for k, v in stats.items() if k.startswith(("loss/", "kl/", "optim/")))
    assert all(p.dtype == torch.float32 and p.device.type == "cuda" for p in learner.model.parameters())


@needs_gpu
def test_reward_gold_and_rollout_models_follow_their_device(tiny_assets):
    from actors.workers import GoldWorker, RewardWorker

    cfg, _, paths, scored = _learner_and_batch(tiny_assets)
    rt = cfg.runtime.model_copy(update={r: getattr(cfg.runtime, r).model_copy(update={"device": "cuda", "num_gpus": 1})
                                        for r in ("reward", "gold", "rollout")})
    cfg = cfg.model_copy(update={"runtime": rt})
    rw = RewardWorker(cfg, [str(p) for p in paths.proxies])
    gw = GoldWorker(cfg, str(paths.gold), str(paths.policy))
    assert all(p.device.type == "cuda" for m in rw.ensemble.members for p in m.model.parameters())
    assert next(gw.evaluator.init_model.parameters()).device.type == "cuda"
    out = rw.score(scored.rollouts)
    drift = gw.evaluate(scored.rollouts, "eval")
    assert len(out.reward) == 8 and drift["eval/kl_from_init_k3"] == drift["eval/kl_from_init_k3"]
