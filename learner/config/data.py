"""Sections of a user's own task (``task.name: dataset``): where its prompts come from, and the scorers (reward models,
Python functions, HTTP reward servers) that its proxies and its gold are made of."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from learner.config.base import Strict

_FUNCTION = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class DatasetConfig(Strict):
    """The prompts of a ``task.name: dataset`` run: a file (jsonl, json, csv, parquet), a Hugging Face ``datasets`` folder
    (``save_to_disk``) or a hub dataset name, read with the ``datasets`` library."""

    path: str = Field(description="A .jsonl / .json / .csv / .parquet file, a datasets folder written by save_to_disk, or a hub dataset name.")
    split: str = Field("train", description="The split to read (hub datasets and DatasetDict folders; a single file is one split).")
    prompt_key: str = Field("prompt", description="Column holding each prompt: a string, or a chat `messages` list of {role, content}.")
    heldout_path: str | None = Field(None, description="Held-out prompts from another file / folder / dataset (same columns). None = a seeded "
                                     "fraction (task.heldout_fraction) of `path` is held out.")
    heldout_split: str | None = Field(None, description="Held-out prompts from this split of `path` (e.g. 'test') instead of a seeded fraction.")
    metadata_keys: list[str] = Field(default_factory=list, description="Columns passed to every scorer with its prompt (e.g. a reference answer "
                                     "for a verifiable reward): a function scorer gets them as keyword lists, an HTTP scorer in `metadata`.")
    chat_template: bool = Field(False, description="Render each prompt with the policy tokenizer's chat template (add_generation_prompt). "
                                "A `messages` prompt needs it; a string prompt becomes one user turn.")
    system_prompt: str | None = Field(None, description="With chat_template: a system turn before every prompt (unless the prompt has one).")
    max_prompt_tokens: int = Field(256, ge=1, le=131072, description="Prompts longer than this (policy tokens, after the template) are "
                                   "dropped and counted, or refused (too_long).")
    too_long: Literal["drop", "error"] = Field("drop", description="drop: leave a too long prompt out and count it in the task's manifest; "
                                               "error: refuse the dataset, naming the first such row.")
    max_prompts: int | None = Field(None, ge=1, description="Use at most this many rows (after the seeded shuffle). None = all.")

    @field_validator("path", "prompt_key")
    @classmethod
    def _nonempty(cls, v: str, info) -> str:
        if not v.strip() or "\x00" in v:
            raise ValueError(f"task.data.{info.field_name} must be a non-empty string without NUL bytes, got {v!r}")
        return v

    @field_validator("metadata_keys")
    @classmethod
    def _meta(cls, v: list[str]) -> list[str]:
        reserved = {"prompt", "prompts", "responses"}
        bad = [k for k in v if k in reserved or not k]
        if bad or len(set(v)) != len(v):
            raise ValueError(f"task.data.metadata_keys must be distinct column names other than {sorted(reserved)}, got {v}")
        return v

    @model_validator(mode="after")
    def _heldout(self) -> "DatasetConfig":
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError("task.data.system_prompt needs task.data.chat_template: true (a system turn exists only in a chat template)")
        return self


class ScorerConfig(Strict):
    """One reward source: a proxy-ensemble member (proxy.scorers) or the held-out gold (gold.scorer).

    Every kind answers one float per (prompt, response); a NaN, an infinity or a wrong count is an error naming the scorer."""

    kind: Literal["hf_reward_model", "function", "http", "profanity"] = Field(
        description="hf_reward_model: a Hugging Face sequence classifier used as it is (one logit, or the log-odds of a named label); "
        "function: a Python function module:function(prompts, responses, **metadata) -> list[float]; "
        "http: a remote reward server (POST {query, prompts, responses, labels, metadata} -> {rewards}; OpenRLHF's remote reward "
        "protocol); profanity: alt-profanity-check's non-toxicity logit log((1-p)/p).")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="A short name in logs and errors (default: derived from the source).")
    name_or_path: str | None = Field(None, description="hf_reward_model: hub name or folder.")
    label: str | int | None = Field(None, description="hf_reward_model with several labels: the label (name in id2label, or index) whose "
                                    "log-odds is the reward. None: the single logit of a one-label head (several labels are then refused as ambiguous).")
    chat_template: bool = Field(False, description="hf_reward_model: format each sample as a [user prompt, assistant response] conversation "
                                "with the reward model's own chat template (reward models often tokenise differently from the policy).")
    max_len: int = Field(512, ge=8, le=131072, description="hf_reward_model: tokens it reads (truncated on the left of nothing: the end is kept).")
    batch_size: int = Field(32, ge=1, le=65536, description="Samples per forward pass (hf_reward_model) or per request (http).")
    function: str | None = Field(None, description="function: 'package.module:function', importable where the reward role runs.")
    url: str | None = Field(None, description="http: the endpoint, e.g. http://127.0.0.1:5000/get_reward.")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="http: seconds per request before it counts as failed.")
    retries: int = Field(3, ge=0, le=100, description="http: retries of a failed request (connection error, timeout, 5xx), with backoff.")
    backoff_s: float = Field(1.0, ge=0, le=600, description="http: first retry after this long, doubling each time.")
    token_env: str | None = Field(None, description="http: the environment variable holding a bearer token (sent as Authorization: Bearer).")

    @model_validator(mode="after")
    def _fields(self) -> "ScorerConfig":
        need = {"hf_reward_model": "name_or_path", "function": "function", "http": "url"}.get(self.kind)
        if need and not getattr(self, need):
            raise ValueError(f"a scorer of kind '{self.kind}' needs `{need}`")
        if self.kind == "function" and not _FUNCTION.match(self.function or ""):
            raise ValueError(f"scorer function must look like 'package.module:function', got {self.function!r}")
        if self.kind == "http" and not re.match(r"^https?://[^\s/]+", self.url or ""):
            raise ValueError(f"scorer url must be an http:// or https:// URL, got {self.url!r}")
        if self.token_env is not None and not _ENV_NAME.match(self.token_env):
            raise ValueError(f"scorer token_env must be an environment variable name, got {self.token_env!r}")
        foreign = {"name_or_path": "hf_reward_model", "label": "hf_reward_model", "function": "function", "url": "http", "token_env": "http"}
        wrong = [f for f, k in foreign.items() if getattr(self, f) is not None and k != self.kind]
        if wrong:
            raise ValueError(f"scorer field(s) {', '.join(wrong)} do not apply to kind '{self.kind}'")
        return self

    @property
    def display(self) -> str:
        if self.name:
            return self.name
        src = self.name_or_path or self.function or self.url or self.kind
        return f"{self.kind}:{src}"


class PreferenceConfig(Strict):
    """Preference pairs of the user's own (proxy.source: preferences): proxies trained on them with the Bradley-Terry loss."""

    path: str = Field(description="A .jsonl / .json / .csv / .parquet file, a datasets folder or a hub dataset name.")
    split: str = Field("train", description="The split to read.")
    prompt_key: str | None = Field("prompt", description="Column with the prompt (None: chosen and rejected hold the whole text).")
    chosen_key: str = Field("chosen", description="Column with the preferred response.")
    rejected_key: str = Field("rejected", description="Column with the other response.")
    heldout_fraction: float = Field(0.1, gt=0, lt=1, description="Seeded fraction of pairs held out to report each member's agreement.")
