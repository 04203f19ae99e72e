"""A trained policy as a Hugging Face folder that ``from_pretrained`` and vLLM load: the weights of a checkpoint's policy on
the architecture, tokenizer and generation config of the folder the run started from."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def policy_weights(model_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The causal LM's weights in a learner checkpoint's ``model`` state: PPO's policy-with-value keeps them under ``lm.``
    (beside its value head and critic, or alone with a critic-free ppo.advantage); f-DPG's and Quark's model is the LM
    itself."""
    wrapped = ("lm.", "value_head.", "critic.")
    if model_state and all(k.startswith(wrapped) for k in model_state) and any(k.startswith("lm.") for k in model_state):
        return {k[len("lm."):]: v for k, v in model_state.items() if k.startswith("lm.")}
    return dict(model_state)


def export_policy(start_folder: str | Path, checkpoint: str | Path, out_dir: str | Path, *, note: dict | None = None) -> Path:
    """Write ``out_dir`` (weights as safetensors, config, tokenizer, generation config): the run's start policy with the
    weights of ``checkpoint`` (a learner.pt). Every weight must match the architecture (strict). Returns ``out_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from learner.models.tokenizer import stop_token_ids

    start_folder, out_dir = str(start_folder), Path(out_dir)
    sd = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
    model = AutoModelForCausalLM.from_pretrained(start_folder, dtype=torch.float32)
    weights = policy_weights(sd["model"])
    if sd.get("lora") is not None:  # policy.lora: the checkpoint holds the adapters; the export is the start policy with them merged
        from learner.config import LoraSettings
        from learner.models.lora import merge_into

        model = merge_into(model, weights, LoraSettings(**sd["lora"]))
        weights = model.state_dict()
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {k for k in missing if k.endswith("lm_head.weight")} if getattr(model.config, "tie_word_embeddings", False) else set()
    if unexpected or set(missing) - tied:
        raise ValueError(f"checkpoint {checkpoint} does not fit the policy of {start_folder}: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    tok = AutoTokenizer.from_pretrained(start_folder)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    try:
        gen = GenerationConfig.from_pretrained(start_folder)
    except (OSError, ValueError):
        gen = GenerationConfig()
    stops = stop_token_ids(tok, start_folder)
    gen.eos_token_id = stops if len(stops) > 1 else stops[0]
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    gen.save_pretrained(str(tmp))
    (tmp / "tether_export.json").write_text(json.dumps({"start_policy": start_folder, "checkpoint": str(checkpoint),
                                                         "iteration": sd.get("iteration"), "version": sd.get("version"), **(note or {})}, indent=1))
    if out_dir.exists():
        import shutil

        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
