"""A faster in-place weight reload for vLLM's CPU backend: only what the CPU kernels need redone, nothing else.

vLLM's ``reload_weights`` (vllm/model_executor/model_loader/reload/layerwise.py, vLLM 0.32) is general: it moves every
layer back onto the meta device, materialises fresh tensors, runs the model's ``load_weights`` into them, runs each
layer's ``process_weights_after_loading`` and copies the results back into the original storage. On CPU the only part a
refreshed policy needs is the last step's kernel preparation: each linear layer's weight is packed into a oneDNN (or
sgl) handle and the weight itself removed (``dispatch_cpu_unquantized_gemm(layer, remove_weight=True)``,
vllm/model_executor/layers/utils.py:470, called by ``UnquantizedLinearMethod.process_weights_after_loading``,
linear.py:206). So this path, per layer:

- a linear layer (``UnquantizedLinearMethod``): its kernel-format weight is the checkpoint tensor, or its parts
  concatenated in the model's ``packed_modules_mapping`` order (q, k, v for ``qkv_proj``; gate, up for
  ``gate_up_proj``): a view of the mapped file when the parts lie next to each other in it, as a state dict's order
  puts them. It becomes the layer's weight and vLLM's own ``process_weights_after_loading`` packs it (a packing copies:
  the handle never points into the file; a kernel that keeps the weight itself gets a private copy here).
- the output layer (``ParallelLMHead``): its weight is copied in place, then its handle rebuilt the same way.
- every other parameter (embeddings, norms): copied in place.

The input embedding's own handle is not rebuilt: ``VocabParallelEmbedding.forward`` reads ``layer.weight`` through
``F.embedding`` (vocab_parallel_embedding.py:84) and only a ``ParallelLMHead`` computes logits with its handle.

``plan`` accepts a model only when every parameter is covered this way, shapes equal, on the CPU platform, with no
quantisation and one tensor-parallel rank; otherwise it returns None and the caller uses vLLM's ``reload_weights``.
Tested against that path and against a cold start of the same weights (tests/integration/test_vllm_engine.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class ReloadPlan:
    linears: list[tuple[torch.nn.Module, list[str], list[str] | None]] = field(default_factory=list)  # (layer, weight parts, bias parts)
    copies: list[tuple[torch.nn.Parameter, str]] = field(default_factory=list)  # (parameter, checkpoint name), copied in place
    heads: list[torch.nn.Module] = field(default_factory=list)  # output layers whose handle is rebuilt after the copies


def plan(model: torch.nn.Module, shapes: dict[str, tuple[int, ...]], vllm_config) -> ReloadPlan | None:
    """How to load checkpoint tensors of these shapes into ``model`` on the fast path; None where it does not apply."""
    from vllm.model_executor.layers.linear import UnquantizedLinearMethod
    from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead, UnquantizedEmbeddingMethod
    from vllm.platforms import current_platform

    if not current_platform.is_cpu() or vllm_config.quant_config is not None or vllm_config.lora_config is not None:
        return None
    if vllm_config.parallel_config.tensor_parallel_size != 1 or vllm_config.parallel_config.pipeline_parallel_size != 1:
        return None
    packed = getattr(model, "packed_modules_mapping", {}) or {}
    out, covered = ReloadPlan(), set()
    for mname, mod in model.named_modules():
        prefix = f"{mname}." if mname else ""
        qm = getattr(mod, "quant_method", None)
        params = dict(mod.named_parameters(recurse=False))
        if type(qm) is UnquantizedLinearMethod and "weight" in params:
            if not hasattr(mod, "cpu_linear"):
                return None
            base, _, last = mname.rpartition(".")
            parts = [f"{base}.{p}" if base else p for p in packed.get(last, [last])]
            if any(f"{p}.weight" not in shapes for p in parts):
                log.debug("fast reload: %s has no checkpoint tensors %s", mname, parts)
                return None
            rows = sum(shapes[f"{p}.weight"][0] for p in parts)
            cols = {shapes[f"{p}.weight"][1:] for p in parts}
            want = (getattr(mod, "output_size_per_partition", None), getattr(mod, "input_size_per_partition", None))
            if len(cols) != 1 or (rows, *next(iter(cols))) != want:
                return None
            bias = None
            if "bias" in params and params["bias"] is not None:
                bias = [f"{p}.bias" for p in parts]
                if any(b not in shapes for b in bias) or sum(shapes[b][0] for b in bias) != params["bias"].shape[0]:
                    return None
                covered.add(id(params["bias"]))
            out.linears.append((mod, [f"{p}.weight" for p in parts], bias))
            covered.add(id(params["weight"]))
            continue
        for pname, p in params.items():
            if id(p) in covered:
                continue  # a tied output layer's weight is the embedding's parameter: copied once
            name = prefix + pname
            if name not in shapes or tuple(shapes[name]) != tuple(p.shape):
                log.debug("fast reload: no checkpoint tensor of shape %s for %s", tuple(p.shape), name)
                return None
            out.copies.append((p, name))
            covered.add(id(p))
        if isinstance(mod, ParallelLMHead):
            if type(qm) is not UnquantizedEmbeddingMethod:
                return None
            out.heads.append(mod)
    if any(id(p) not in covered for p in model.parameters()):
        return None
    return out


@torch.no_grad()
def apply(p: ReloadPlan, views: dict[str, torch.Tensor], mapping: torch.Tensor) -> int:
    """Load ``views`` (checkpoint name -> tensor) along the plan; returns the tensors read. ``mapping``: the buffer the views
    live in, so that no kernel is left holding a pointer into it."""
    n = 0
    for param, name in p.copies:
        param.data.copy_(views[name])
        n += 1
    for mod, parts, bias in p.linears:
        w = _joined([views[x] for x in parts])
        mod.weight = torch.nn.Parameter(w, requires_grad=False)
        if bias is not None:
            mod.bias.data.copy_(_joined([views[b] for b in bias]))
        mod.quant_method.process_weights_after_loading(mod)  # vLLM packs the weight into its CPU kernel's handle
        kept = mod.weight
        if kept.numel() and _inside(kept, mapping):
            mod.weight = torch.nn.Parameter(kept.detach().clone(), requires_grad=False)  # the plain F.linear fallback reads it
        n += len(parts) + len(bias or [])
    for head in p.heads:
        head.quant_method.process_weights_after_loading(head)  # its handle over the weight just copied
    return n


def _joined(ts: list[torch.Tensor]) -> torch.Tensor:
    """The parts one after another along dim 0: a view when they are already adjacent in memory, else a new tensor."""
    if len(ts) == 1:
        return ts[0]
    a = ts[0]
    end = a.data_ptr()
    adjacent = all(t.is_contiguous() and t.dtype == a.dtype and t.shape[1:] == a.shape[1:] for t in ts)
    for t in ts:
        adjacent = adjacent and t.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() and t.data_ptr() == end
        end = t.data_ptr() + t.numel() * t.element_size()
    if adjacent:
        rows = sum(t.shape[0] for t in ts)
        return a.as_strided((rows, *a.shape[1:]), a.stride(), a.storage_offset())
    return torch.cat(ts)


def _inside(t: torch.Tensor, mapping: torch.Tensor) -> bool:
    lo = mapping.data_ptr()
    return lo <= t.data_ptr() < lo + mapping.numel() * mapping.element_size()
