"""Rollout generation with vLLM: the same interface as learner.models.engine.TransformersEngine, faster.

A plain class (no Ray decorator): it runs in-process for tests and debugging, and an actor wraps it.
vLLM starts helper processes with spawn, so an entry script that builds one needs
``if __name__ == "__main__":`` (docs/cpu-notes.md, "vLLM on CPU").

Weights are updated in place, without a restart: a safetensors file in tmpfs, which each vLLM worker maps and hands to
its ``reload_weights`` as views (actors/collective.py: WeightReceiverExtension.reload_file; the model's own
``load_weights`` fails on CPU after start-up).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from actors.weight_sync import TmpfsWeightSync, WeightSync
from learner.config import GenerationConfig
from learner.models.tokenizer import cut_at_stop, encode_prompts, stop_token_ids
from learner.types import Rollouts

log = logging.getLogger(__name__)

# Behaviour log-probs = log-probs of the distribution the token was actually drawn from.
# vLLM 0.32 returns "raw_logprobs" by default: log_softmax of the model's logits *before* temperature,
# top-k and the min_tokens EOS mask (v1/sample/sampler.py). At temperature != 1 or top_k > 0 those are
# not the sampling distribution, so we ask for "processed_logprobs": after the logits processors
# (none here), temperature and top-k -- the same
# quantity TransformersEngine computes from generate's processed `scores`. Measured on the tiny policy
# (float32): max |vLLM - learner forward with the same processing| = 9.5e-7 at T=1 and at T=0.7/top-k 20;
# against the learner's plain log pi at T=1 the gap is log(1 - p_eos), 1.8e-3 at most.
LOGPROBS_MODE = "processed_logprobs"
_SEED_STRIDE = 1_000_003  # per-request seed = seed * stride + index: fixed per prompt, independent of batching


class VLLMEngine:
    name = "vllm"

    def __init__(
        self, model_path: str | Path, gen: GenerationConfig, *, seed: int = 0, kv_cache_gib: int = 1, dtype: str = "float32",
        run_id: str | None = None, max_num_seqs: int = 256, warmup: bool = True,
    ):
        if int(kv_cache_gib) != kv_cache_gib or kv_cache_gib < 1:
            raise ValueError(f"kv_cache_gib must be a whole number of GiB >= 1 (VLLM_CPU_KVCACHE_SPACE), got {kv_cache_gib}")
        t0 = time.perf_counter()
        # Read by vLLM when it builds its config: must be in the environment before the engine starts.
        # KV cache size in GiB (without it the CPU start-up memory check fails on this machine).
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(int(kv_cache_gib))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from transformers import AutoTokenizer
        from vllm import LLM

        from actors import vllm_logging

        vllm_logging.install()  # in this process; the workers install it when they import actors.collective
        self.gen, self.seed = gen, seed
        self.tok = AutoTokenizer.from_pretrained(str(model_path))
        # every stop token of the model (its tokenizer's EOS and its generation config's): the same list TransformersEngine
        # stops on. vLLM reads no generation_config.json here (generation_config="vllm"), so the extra ones go in stop_token_ids.
        self.stop_ids = stop_token_ids(self.tok, model_path)
        self.llm = LLM(
            model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
            enforce_eager=True,  # torch.compile gave no gain on CPU and doubled start-up
            logprobs_mode=LOGPROBS_MODE, generation_config="vllm",  # our SamplingParams only, not generation_config.json
            max_num_seqs=max_num_seqs,
            worker_extension_cls="actors.collective.WeightReceiverExtension",  # the collective weight sync's receiving end
        )
        # This engine's own tmpfs slots for load_weights(state_dict): its workers read a file.
        self._sync = TmpfsWeightSync(run_id=run_id or f"vllm-{os.getpid()}-{id(self):x}")
        self.policy_version = 0
        self.fast_reload = True  # actors/vllm_reload.py where it applies (vLLM's CPU backend); False: vLLM's reload_weights
        self.last_reload_path: str | None = None
        if warmup:  # the first call is 1.5-4x slower; any prompt will do (each request has its own seed)
            self.generate([""], seed=seed, prompt_ids=[[self.stop_ids[0]]])
        self.startup_s = time.perf_counter() - t0
        self.last_reload_s: float | None = None
        log.info("vLLM engine ready in %.1f s (%s, %s)", self.startup_s, model_path, dtype)

    def _sampling_params(self, seed: int, n_prompts: int):
        from vllm import SamplingParams

        g = self.gen
        return [
            SamplingParams(
                n=1, temperature=g.temperature, top_k=g.top_k, top_p=1.0,
                max_tokens=g.max_new_tokens,  # EOS allowed (no min_tokens): the sampled distribution is pi itself, as in TransformersEngine
                logprobs=0,  # the sampled token's log-prob only
                stop_token_ids=[t for t in self.stop_ids if t != self.tok.eos_token_id] or None,  # the tokenizer's EOS stops vLLM already
                seed=seed * _SEED_STRIDE + i, detokenize=False,  # we decode with the HF tokenizer, as TransformersEngine does
            )
            for i in range(n_prompts)
        ]

    def generate(self, prompts: list[str], *, seed: int, prefix_ids: list[int] | None = None,
                 prompt_ids: list[list[int]] | None = None) -> Rollouts:
        """Sample one response per prompt; ``prefix_ids`` (e.g. Quark's reward token) go before each prompt. ``prompt_ids``:
        the prompts' token ids as the task encoded them (a dataset task); None = the IMDB encoding of ``prompts``."""
        from vllm.inputs import TokensPrompt

        prefix = list(prefix_ids or [])
        pids = [prefix + p for p in (encode_prompts(self.tok, prompts) if prompt_ids is None else prompt_ids)]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in pids], self._sampling_params(seed, len(pids)), use_tqdm=False)
        resp_ids, resp_lp = [], []
        for o in outs:  # in prompt order
            c = o.outputs[0]
            ids = list(c.token_ids)
            ids = ids[: cut_at_stop(ids, self.stop_ids)]  # up to and including the first stop token
            resp_ids.append(ids)
            resp_lp.append([float(step[t].logprob) for t, step in zip(ids, c.logprobs)])
        return Rollouts(
            prompts=list(prompts), prompt_ids=pids, response_ids=resp_ids, behaviour_logprobs=resp_lp,
            responses=self.tok.batch_decode(resp_ids, skip_special_tokens=True), policy_version=self.policy_version, engine=self.name,
            n_prefix=len(prefix),
        )

    def load_weights_from_file(self, path: str | Path, version: int) -> None:
        """Reload every weight in place from one safetensors file (checkpoint names, e.g. a WeightSync slot): each worker
        maps it and reloads from views of the mapping, checking that the file holds ``version`` and was not rewritten."""
        t0 = time.perf_counter()
        self.last_reload_path = self.llm.collective_rpc("reload_file", args=(str(path), int(version), self.fast_reload))[0]
        self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
        self.policy_version = int(version)
        self.last_reload_s = time.perf_counter() - t0

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        """Same call as TransformersEngine.load_weights: written to this engine's tmpfs slot, then reloaded."""
        path, version = self._sync.receive_file(self._sync.send(state_dict.items(), version))
        self.load_weights_from_file(path, version)

    @property
    def n_workers(self) -> int:
        """vLLM worker processes of this engine (tensor x pipeline parallel): each is one rank of a weight group."""
        return int(self.llm.llm_engine.vllm_config.parallel_config.world_size)

    def join_weight_group(self, backend: str, address: str, port: int, rank: int, world: int, timeout_s: float = 300.0) -> None:
        """Join the collective weight sync's group (actors/collective.py) as ranks rank .. rank + n_workers - 1."""
        self.llm.collective_rpc("init_weight_group", args=(backend, address, port, rank, world, timeout_s))

    def receive_collective(self, meta, bucket_mb: float, version: int) -> None:
        """Receive the learner's broadcast straight into vLLM's in-place reload (no file on the path)."""
        t0 = time.perf_counter()
        self.llm.collective_rpc("receive_weights_collective", args=(meta, bucket_mb))
        self.llm.reset_prefix_cache()
        self.policy_version = int(version)
        self.last_reload_s = time.perf_counter() - t0

    def receive_weights(self, sync: WeightSync, handle) -> int:
        """Load what a learner published through any WeightSync backend; returns the new version."""
        path, version = sync.receive_file(handle)
        self.load_weights_from_file(path, version)
        return version

    def close(self) -> None:
        """Stop vLLM's helper processes and remove this engine's tmpfs folder."""
        self._sync.close()
        try:
            self.llm.llm_engine.engine_core.shutdown()
        except Exception as e:  # best effort: the processes also end with the parent
            log.warning("vLLM shutdown: %s", e)
