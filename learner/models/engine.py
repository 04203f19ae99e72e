"""Rollout generation with transformers `generate`: the fallback engine and the reference for vLLM.

Both engines implement `generate(prompts, *, seed) -> Rollouts` and `load_weights(state_dict, version)`.
"""
from __future__ import annotations

import torch

from learner.config import GenerationConfig
from learner.models.device import model_device
from learner.models.tokenizer import encode_prompts
from learner.types import Rollouts


def cut_at_eos(ids: list[int], eos_id: int) -> int:
    """Length of a response up to and including its first EOS (the EOS is an action the policy took)."""
    return ids.index(eos_id) + 1 if eos_id in ids else len(ids)


class TransformersEngine:
    name = "transformers"

    def __init__(self, model, tok, gen: GenerationConfig, *, batch_size: int = 64):
        self.model, self.tok, self.gen, self.batch_size = model.eval(), tok, gen, batch_size
        self.policy_version = 0

    @classmethod
    def from_path(cls, path, gen: GenerationConfig, *, device=None, **kw) -> "TransformersEngine":
        from transformers import AutoTokenizer

        from learner.models.policy import load_policy

        return cls(load_policy(path).to(device or "cpu"), AutoTokenizer.from_pretrained(str(path)), gen, **kw)

    def load_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        missing, unexpected = self.model.load_state_dict(state_dict, strict=False)
        if unexpected:
            raise KeyError(f"weights not in the rollout model: {unexpected[:5]}")
        self.policy_version = version

    @torch.no_grad()
    def generate(self, prompts: list[str], *, seed: int, prefix_ids: list[int] | None = None) -> Rollouts:
        """Sample one response per prompt; ``prefix_ids`` (e.g. Quark's reward token) go before each prompt."""
        g = self.gen
        torch.manual_seed(seed)
        prefix = list(prefix_ids or [])
        pids = [prefix + p for p in encode_prompts(self.tok, prompts)]
        resp_ids, resp_lp = [], []
        pad = self.tok.pad_token_id
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
                output_scores=True, return_dict_in_generate=True,
            )
            seq = out.sequences[:, width:]  # (b, R)
            scores = torch.stack(out.scores, dim=1).float()  # (b, R, V) processed logits = the sampling distribution
            lp = torch.log_softmax(scores, -1).gather(-1, seq.unsqueeze(-1)).squeeze(-1)
            for ids_row, lp_row in zip(seq.tolist(), lp.tolist()):
                n = cut_at_eos(ids_row, self.tok.eos_token_id)
                resp_ids.append(ids_row[:n])
                resp_lp.append(lp_row[:n])
        return Rollouts(
            prompts=list(prompts), prompt_ids=pids, response_ids=resp_ids, behaviour_logprobs=resp_lp,
            responses=self.tok.batch_decode(resp_ids, skip_special_tokens=True), policy_version=self.policy_version, engine=self.name,
            n_prefix=len(prefix),
        )
