"""The prompts stage of a dataset task: read the rows, render each prompt (the policy tokenizer's chat template, or the string
as it is), encode it with the policy's tokenizer, drop (and count) or refuse the too long, split train / held-out, and write
both as jsonl: {"text": rendered prompt, "ids": policy token ids, "meta": {"prompt": the user's prompt, metadata columns}}."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from learner.config import TetherConfig
from tasks.dataset.data import load_rows, require_columns
from tasks.store import AssetError

log = logging.getLogger(__name__)


def as_messages(prompt, *, row: int, field: str) -> list[dict]:
    """A chat prompt as a list of {role, content} turns; AssetError naming the row when it is neither a string nor such a list."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                                                  for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise AssetError(f"{field}: row {row} holds {str(prompt)[:120]!r}; a prompt is a string or a non-empty list of "
                     "{{\"role\": str, \"content\": str}} messages")


def render(prompt, tok, cfg: TetherConfig, *, row: int) -> tuple[str, list[int]]:
    """(the text the policy sees, its token ids). Chat template: the turns (after an optional system turn) with the generation
    prompt, encoded without adding special tokens (the template holds them, as TRL and vLLM do). Otherwise the string,
    encoded with the tokenizer's own special tokens (a Llama tokenizer's BOS; none for GPT-2)."""
    dc = cfg.task.data
    field = f"task.data.prompt_key ({dc.prompt_key!r})"
    if dc.chat_template:
        msgs = as_messages(prompt, row=row, field=field)
        if dc.system_prompt and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": dc.system_prompt}, *msgs]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        return text, tok.encode(text, add_special_tokens=False)
    if not isinstance(prompt, str):
        as_messages(prompt, row=row, field=field)  # a malformed value gets the error above
        raise AssetError(f"{field}: row {row} is a chat messages list; set task.data.chat_template: true to render it with the policy's template")
    return prompt, tok.encode(prompt, add_special_tokens=True)


def _records(ds, tok, cfg: TetherConfig, *, source: str) -> tuple[list[dict], dict]:
    dc = cfg.task.data
    require_columns(ds, [dc.prompt_key, *dc.metadata_keys], source=source, field="task.data.prompt_key / metadata_keys")
    out, too_long, empty, shortest = [], 0, 0, None
    for i, row in enumerate(ds):
        prompt = row[dc.prompt_key]
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            empty += 1
            continue
        text, ids = render(prompt, tok, cfg, row=i)
        if not ids:
            empty += 1
            continue
        if len(ids) > dc.max_prompt_tokens:
            if dc.too_long == "error":
                raise AssetError(f"task.data: row {i} of {source} is {len(ids)} policy tokens, over task.data.max_prompt_tokens "
                                 f"({dc.max_prompt_tokens}); raise the limit, or set task.data.too_long: drop to leave such prompts out")
            too_long += 1
            shortest = len(ids) if shortest is None else min(shortest, len(ids))
            continue
        meta = {"prompt": prompt, **{k: row[k] for k in dc.metadata_keys}}
        out.append({"text": text, "ids": ids, "meta": meta})
    counts = {"rows": len(ds), "kept": len(out), "dropped_too_long": too_long, "dropped_empty": empty}
    if not out:
        why = (f"all {too_long} non-empty prompts are longer than task.data.max_prompt_tokens ({dc.max_prompt_tokens}; the shortest is "
               f"{shortest} tokens): raise the limit" if too_long else "every prompt is empty")
        raise AssetError(f"task.data: no usable prompt in {source}: {why}")
    return out, counts


def build_prompts(cfg: TetherConfig, out_dir: Path) -> dict:
    """Write train.jsonl and heldout.jsonl into ``out_dir``; returns the stage's figures."""
    from transformers import AutoConfig, AutoTokenizer

    dc, task = cfg.task.data, cfg.task
    tok = AutoTokenizer.from_pretrained(str(cfg.policy.name_or_path))
    if dc.chat_template and not getattr(tok, "chat_template", None):
        raise AssetError(f"task.data.chat_template is true but the policy tokenizer ({cfg.policy.name_or_path}) has no chat template; "
                         "set chat_template: false (prompts are then used as plain text) or use a chat model's tokenizer")
    max_pos = getattr(AutoConfig.from_pretrained(str(cfg.policy.name_or_path)), "max_position_embeddings", None)
    if max_pos and dc.max_prompt_tokens + cfg.generation.max_new_tokens > max_pos:
        raise AssetError(f"task.data.max_prompt_tokens ({dc.max_prompt_tokens}) + generation.max_new_tokens ({cfg.generation.max_new_tokens}) "
                         f"exceeds the policy's {max_pos} positions; lower one of them")
    rows = load_rows(dc.path, dc.split)
    order = np.random.default_rng(task.seed).permutation(len(rows))
    if dc.max_prompts is not None:
        order = order[: dc.max_prompts]
    rows = rows.select(order.tolist())
    records, counts = _records(rows, tok, cfg, source=f"{dc.path!r} ({dc.split})")
    if dc.heldout_path is not None or dc.heldout_split is not None:
        hpath, hsplit = dc.heldout_path or dc.path, dc.heldout_split or dc.split
        if hpath == dc.path and hsplit == dc.split:
            raise AssetError("task.data.heldout_path / heldout_split name the training rows themselves; name another split or file, "
                             "or leave both unset for a seeded held-out fraction")
        held, hcounts = _records(load_rows(hpath, hsplit, field="task.data.heldout_path"), tok, cfg, source=f"{hpath!r} ({hsplit})")
        train = records
        split_note = f"held-out rows from {hpath!r} ({hsplit})"
    else:
        if len(records) < 2:
            raise AssetError(f"task.data: {len(records)} usable prompt(s); a seeded held-out split needs at least 2 "
                             "(or name held-out rows with task.data.heldout_path / heldout_split)")
        n_held = min(len(records) - 1, max(1, int(round(len(records) * task.heldout_fraction))))
        held, train, hcounts = records[:n_held], records[n_held:], None
        split_note = f"seeded fraction {task.heldout_fraction} of the rows"
    for name, part in (("train", train), ("heldout", held)):
        with open(out_dir / f"{name}.jsonl", "w") as f:
            for r in part:
                f.write(json.dumps(r, default=str) + "\n")
    lengths = [len(r["ids"]) for r in train + held]
    figures = {**counts, "train_prompts": len(train), "heldout_prompts": len(held), "heldout": split_note,
               "prompt_tokens_median": float(np.median(lengths)), "prompt_tokens_max": int(max(lengths)),
               "chat_template": dc.chat_template, "example": train[0]["text"][:300]}
    if hcounts is not None:
        figures["heldout_counts"] = hcounts
    if counts["dropped_too_long"]:
        log.warning("prompts: %d of %d rows dropped as longer than task.data.max_prompt_tokens (%d)", counts["dropped_too_long"],
                    counts["rows"], dc.max_prompt_tokens)
    return figures


def read_prompts(folder: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (Path(folder) / f"{split}.jsonl").read_text().splitlines() if line]
