"""One scorer contract for proxies and gold: ``score(prompts, responses, meta) -> (N,) float64``.

Kinds (``learner.config.ScorerConfig.kind``), one class each, registered in ``SCORERS``:
  hf_reward_model  a Hugging Face sequence classifier used as it is, with its own tokenizer (and chat template): one logit, or
                   the log-odds log p(label) - log(1 - p(label)) of a named label (for two labels: the logit difference);
  function         ``module:function(prompts, responses, **metadata) -> list[float]`` (rule-based, verifiable rewards);
  http             a remote reward server speaking OpenRLHF's protocol: POST {"query": [prompt + response], "prompts": [...],
                   "responses": [...], "labels": [...], "metadata": [...]} -> {"rewards": [...]}, in batches, with a timeout,
                   retries with exponential backoff on connection errors, timeouts and 5xx, and a bearer token from the environment;
  profanity        alt-profanity-check's non-toxicity logit (Quark's toxicity task).
Whatever the kind, the answer is checked: one finite number per sample, else ``ScorerError`` naming the scorer.

``prompts`` are what the scorer should read as the prompt: the user's own prompt where the task keeps it (``meta[i]["prompt"]``,
a string or a chat ``messages`` list), else the rendered prompt the policy saw.
"""
from __future__ import annotations

import importlib
import logging
import os
import time
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)


class ScorerError(RuntimeError):
    """A scorer that cannot be built or gave an unusable answer: the message names the scorer and what was expected."""


def check_scores(name: str, values: Any, n: int) -> np.ndarray:
    """``values`` as an (n,) float64 array of finite numbers, else ScorerError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1) if not isinstance(values, (str, bytes, dict)) else None
    except (TypeError, ValueError):
        arr = None
    if arr is None:
        raise ScorerError(f"scorer {name}: expected a list of {n} numbers, got {type(values).__name__} {str(values)[:200]!r}")
    if arr.shape[0] != n:
        raise ScorerError(f"scorer {name}: returned {arr.shape[0]} values for {n} samples (one number per sample is required)")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise ScorerError(f"scorer {name}: non-finite reward {float(arr[bad[0]])} for sample {int(bad[0])} ({bad.size} of {n} non-finite); "
                          "a scorer must return finite numbers")
    return arr


def conversation_texts(prompts: list, responses: list[str]) -> list[str]:
    """prompt + response as one text (a messages prompt: its turns' contents joined by newlines)."""
    return [plain_prompt(p) + r for p, r in zip(prompts, responses)]


def plain_prompt(p) -> str:
    if isinstance(p, str):
        return p
    return "\n".join(str(m.get("content", "")) for m in p)


def as_messages(prompt, response: str) -> list[dict]:
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    return msgs + [{"role": "assistant", "content": response}]


class HFRewardModelScorer:
    """A pretrained sequence classifier as it is: its own tokenizer and (``chat_template``) chat template, batched, on ``device``."""

    def __init__(self, spec, *, device=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from learner.models.tokenizer import with_padding

        self.name, self.spec = spec.display, spec
        try:
            self.tok = with_padding(AutoTokenizer.from_pretrained(str(spec.name_or_path)))
            self.model = AutoModelForSequenceClassification.from_pretrained(str(spec.name_or_path), dtype=torch.float32).eval()
        except (OSError, ValueError) as e:
            raise ScorerError(f"scorer {self.name}: cannot load the reward model {spec.name_or_path!r} "
                              f"(a Hugging Face sequence-classification folder or hub name): {e}") from None
        self.model.to(device or "cpu")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tok.pad_token_id  # the last-token readout finds each row's end by it
        self.column = self._label_column(spec.label)
        if spec.chat_template and not getattr(self.tok, "chat_template", None):
            raise ScorerError(f"scorer {self.name}: chat_template is on but the tokenizer of {spec.name_or_path!r} has no chat template")

    def _label_column(self, label) -> int | None:
        """The logit column whose log-odds is the reward; None for a one-logit head (the logit itself)."""
        n = int(self.model.config.num_labels)
        id2label = {int(k): str(v) for k, v in (self.model.config.id2label or {}).items()}
        if label == "__last__":  # gold.kind hf_classifier without a label: its historical positive-minus-negative reading
            return None if n == 1 else n - 1
        if label is None:
            if n == 1:
                return None
            raise ScorerError(f"scorer {self.name}: the reward model has {n} labels ({', '.join(f'{i}={v}' for i, v in sorted(id2label.items()))}); "
                              "its reward is ambiguous: name one with `label` (its log-odds is the reward), or use a one-logit reward model")
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            i = int(label)
            if not 0 <= i < n:
                raise ScorerError(f"scorer {self.name}: label index {i} is outside the model's {n} labels")
            return i
        by_name = {v: k for k, v in id2label.items()}
        if label not in by_name:
            raise ScorerError(f"scorer {self.name}: label {label!r} is not one of the model's labels {sorted(by_name)}")
        return by_name[label]

    def _texts(self, prompts: list, responses: list[str]) -> list[str]:
        if self.spec.chat_template:
            return [self.tok.apply_chat_template(as_messages(p, r), tokenize=False) for p, r in zip(prompts, responses)]
        return conversation_texts(prompts, responses)

    @torch.no_grad()
    def score(self, prompts: list, responses: list[str], meta: list[dict] | None = None) -> np.ndarray:
        texts = self._texts(prompts, responses)
        out = []
        dev = next(self.model.parameters()).device
        self.tok.padding_side = "right"
        self.tok.truncation_side = "left"  # keep the response's end, where a reward model reads
        for i in range(0, len(texts), self.spec.batch_size):
            enc = self.tok(texts[i : i + self.spec.batch_size], return_tensors="pt", padding=True, truncation=True, max_length=self.spec.max_len,
                           add_special_tokens=not self.spec.chat_template).to(dev)
            logits = self.model(**enc).logits.float()  # (b, n_labels)
            if self.column is None:
                r = logits[:, 0]
            else:
                others = torch.cat([logits[:, : self.column], logits[:, self.column + 1 :]], dim=1)
                r = logits[:, self.column] - torch.logsumexp(others, dim=1)  # log p / (1 - p)
            out.append(r.double().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)


class FunctionScorer:
    """``package.module:function(prompts, responses, **metadata) -> list[float]``; metadata columns arrive as lists."""

    def __init__(self, spec, *, device=None):
        self.name = spec.display
        mod, _, fn = spec.function.partition(":")
        try:
            self.fn: Callable = getattr(importlib.import_module(mod), fn)
        except ImportError as e:
            raise ScorerError(f"scorer {self.name}: cannot import module {mod!r} ({e}); it must be importable where the reward "
                              "and gold roles run (installed, or on PYTHONPATH)") from None
        except AttributeError:
            raise ScorerError(f"scorer {self.name}: module {mod!r} has no function {fn!r}") from None
        if not callable(self.fn):
            raise ScorerError(f"scorer {self.name}: {spec.function} is not callable")

    def score(self, prompts: list, responses: list[str], meta: list[dict] | None = None) -> np.ndarray:
        cols = _columns(meta, len(prompts))
        try:
            return self.fn(list(prompts), list(responses), **cols)
        except ScorerError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's code: name it and what it raised
            raise ScorerError(f"scorer {self.name}: the function raised {type(e).__name__}: {e}") from e


def _columns(meta: list[dict] | None, n: int) -> dict[str, list]:
    """Per-sample metadata dicts as column lists (the user's prompt itself is passed as `prompts`)."""
    if not meta:
        return {}
    keys = [k for k in meta[0] if k != "prompt"]
    return {k: [m.get(k) for m in meta] for k in keys}


class HTTPScorer:
    """A remote reward server (OpenRLHF's remote reward protocol, extended with responses and metadata)."""

    def __init__(self, spec, *, device=None):
        import httpx

        self.name, self.spec = spec.display, spec
        headers = {}
        if spec.token_env:
            token = os.environ.get(spec.token_env)
            if not token:
                raise ScorerError(f"scorer {self.name}: the environment variable {spec.token_env} (its bearer token) is not set")
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(timeout=spec.timeout_s, headers=headers)

    def _post(self, body: dict) -> Any:
        import httpx

        s, err = self.spec, None
        for attempt in range(s.retries + 1):
            if attempt:
                wait = s.backoff_s * 2 ** (attempt - 1)
                log.warning("scorer %s: %s; retry %d/%d in %.1f s", self.name, err, attempt, s.retries, wait)
                time.sleep(wait)
            try:
                resp = self.client.post(s.url, json=body)
            except httpx.TimeoutException:
                err = f"no answer from {s.url} within {s.timeout_s:g} s"
                continue
            except httpx.TransportError as e:
                err = f"cannot reach {s.url} ({type(e).__name__}: {e})"
                continue
            if resp.status_code >= 500 or resp.status_code == 429:
                err = f"{s.url} answered {resp.status_code}"
                continue
            if resp.status_code != 200:
                raise ScorerError(f"scorer {self.name}: {s.url} answered {resp.status_code}: {resp.text[:300]!r} (not retried: a 4xx is the request's fault)")
            try:
                data = resp.json()
            except ValueError:
                raise ScorerError(f"scorer {self.name}: {s.url} answered 200 with a body that is not JSON: {resp.text[:200]!r}") from None
            rewards = data.get("rewards") if isinstance(data, dict) else None
            if rewards is None:
                raise ScorerError(f"scorer {self.name}: {s.url} answered {str(data)[:200]!r}; expected a JSON object {{\"rewards\": [numbers]}}")
            return rewards
        raise ScorerError(f"scorer {self.name}: {err} (after {s.retries + 1} attempts); the run keeps what it logged, resume it with "
                          "`tether train --resume RUN` once the server is back")

    def score(self, prompts: list, responses: list[str], meta: list[dict] | None = None) -> np.ndarray:
        out: list = []
        b = self.spec.batch_size
        for i in range(0, len(prompts), b):
            p, r = list(prompts[i : i + b]), list(responses[i : i + b])
            m = list(meta[i : i + b]) if meta else [{} for _ in p]
            body = {"query": conversation_texts(p, r), "prompts": p, "responses": r, "labels": [x.get("label") for x in m], "metadata": m}
            out.extend(list(check_scores(self.name, self._post(body), len(p))))
        return np.asarray(out, dtype=np.float64)


class ProfanityScorer:
    """alt-profanity-check's non-toxicity logit (learner/models/toxicity.py) on prompt + response."""

    def __init__(self, spec=None, *, device=None):
        from learner.models.toxicity import ToxicityScorer

        self.name = getattr(spec, "display", "profanity")
        self.inner = ToxicityScorer()

    def score(self, prompts: list, responses: list[str], meta: list[dict] | None = None) -> np.ndarray:
        return self.inner.score(conversation_texts(prompts, responses))

    def prob(self, texts: list[str]) -> np.ndarray:
        return self.inner.prob(texts)


SCORERS: dict[str, type] = {"hf_reward_model": HFRewardModelScorer, "function": FunctionScorer, "http": HTTPScorer, "profanity": ProfanityScorer}


class CheckedScorer:
    """A scorer whose every answer is checked (``check_scores``), with a ``score_texts``-free interface for the ensemble and gold."""

    def __init__(self, spec, *, device=None):
        from learner.config import ScorerConfig

        self.spec = spec if isinstance(spec, ScorerConfig) else ScorerConfig.model_validate(spec)
        self.name = self.spec.display
        self.inner = SCORERS[self.spec.kind](self.spec, device=device)
        if hasattr(self.inner, "prob"):  # the profanity scorer: the gold evaluator reports toxicity itself too
            self.prob = self.inner.prob

    def score_samples(self, prompts: list, responses: list[str], meta: list[dict] | None = None) -> np.ndarray:
        if not len(prompts):
            return np.zeros(0)
        return check_scores(self.name, self.inner.score(prompts, responses, meta), len(prompts))

    def score(self, texts: list[str]) -> np.ndarray:
        """Whole texts (prompt + response, no metadata): what best-of-n and the synthetic labelling of whole samples pass."""
        return self.score_samples(list(texts), [""] * len(texts))


def make_scorer(spec, *, device=None) -> CheckedScorer:
    """The scorer a ScorerConfig (or its dict) describes."""
    return CheckedScorer(spec, device=device)


def scorer_prompts(rollouts) -> list:
    """What a scorer reads as each sample's prompt: the task's own prompt where it kept one (meta "prompt"), else the
    rendered prompt."""
    if rollouts.meta and all("prompt" in m for m in rollouts.meta):
        return [m["prompt"] for m in rollouts.meta]
    return list(rollouts.prompts)
