"""Rollout generation with transformers `generate`: the fallback engine and the reference for vLLM.

Both engines implement `generate(prompts, *, seed) -> Rollouts` and `load_weights(state_dict, version)`.
"""
from __future__ import annotations

import torch

from learner.config import GenerationConfig
from learner.models.device import model_device
from learner.models.tokenizer import cut_at_stop, encode_prompts, pad_token_id, stop_token_ids
from learner.types import Rollouts


class TransformersEngine:
    name = "transformers"

    def __init__(self, model, tok, gen: GenerationConfig, *, batch_size: int = 64, stop_ids: list[int] | None = None):
        self.model, self.tok, self.gen, self.batch_size = model.eval(), tok, gen, batch_size
        self.stop_ids = stop_ids or stop_token_ids(tok)
        self.pad_id = pad_token_id(tok)
        self.policy_version = 0

    @classmethod
    def from_path(cls, path, gen: GenerationConfig, *, device=None, **kw) -> "TransformersEngine":
        from transformers import AutoTokenizer

        from learner.models.policy import load_policy

        tok = AutoTokenizer.from_pretrained(str(path))
        return cls(load_policy(path).to(device or "cpu"), tok, gen, stop_ids=stop_token_ids(tok, path), **kw)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise KeyError(f"weights not in the rollout model: {unexpected[:5]}")
        self.policy_version = version

    @torch.no_grad()
    def generate(self, prompts: list[str], *, seed: int, prefix_ids: list[int] | None = None,
                 prompt_ids: list[list[int]] | None = None) -> Rollouts:
        """Sample one response per prompt; ``prefix_ids`` (e.g. Quark's reward token) go before each prompt. ``prompt_ids``:
        the prompts' token ids as the task encoded them (a dataset task); None = the IMDB encoding of ``prompts``."""
        g = self.gen
        torch.manual_seed(seed)
        prefix = list(prefix_ids or [])
        pids = [prefix + p for p in (encode_prompts(self.tok, prompts) if prompt_ids is None else prompt_ids)]
        resp_ids, resp_lp = [], []
        pad = self.pad_id
        for i in range(0, len(pids), self.batch_size):
            chunk = pids[i : i + self.batch_size]
            width = max(len(x) for x in chunk)
            inp = torch.full((len(chunk), width), pad, dtype=torch.long)
            att = torch.zeros_like(inp)
            for j, x in enumerate(chunk):
                inp[j, width - len(x) :] = torch.tensor(x)
                att[j, width - len(x) :] = 1
            dev = model_device(self.model)
            out = self.model.generate(
                input_ids=inp.to(dev), attention_mask=att.to(dev), do_sample=True, temperature=g.temperature, top_k=g.top_k, top_p=1.0,  # explicit: None means "default top_k=50"
                max_new_tokens=g.max_new_tokens, pad_token_id=pad,  # EOS allowed: the sampled distribution is pi itself
                eos_token_id=self.stop_ids if len(self.stop_ids) > 1 else self.stop_ids[0],  # every stop token, as vLLM's stop_token_ids
                output_scores=True, return_dict_in_generate=True,
            )
            seq = out.sequences[:, width:]  # (b, R)
            scores = torch.stack(out.scores, dim=1).float()  # (b, R, V) processed logits = the sampling distribution
            lp = torch.log_softmax(scores, -1).gather(-1, seq.unsqueeze(-1)).squeeze(-1)
            for ids_row, lp_row in zip(seq.tolist(), lp.tolist()):
                n = cut_at_stop(ids_row, self.stop_ids)
                resp_ids.append(ids_row[:n])
                resp_lp.append(lp_row[:n])
        return Rollouts(
            prompts=list(prompts), prompt_ids=pids, response_ids=resp_ids, behaviour_logprobs=resp_lp,
            responses=self.tok.batch_decode(resp_ids, skip_special_tokens=True), policy_version=self.policy_version, engine=self.name,
            n_prefix=len(prefix),
        )
