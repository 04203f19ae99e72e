"""A user's own task, as a new user brings one: small Hugging Face models written with save_pretrained (a Llama-style chat
policy with a pad token and two stop tokens, a GPT-2-style policy with no pad token, a one-logit reward model with its own
tokenizer and chat template, a two-label classifier as the gold), prompt files, a preference file, and reward functions
for function and HTTP scorers. Built in seconds; nothing of tether's builds them."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the a film story movie good bad great actor plot scene music long short funny sad dark bright warm cold fast slow "
         "answer question paris london blue green seven three yes no because really very quite best worst").split()
CHAT = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def _corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14))) for _ in range(n)]


def make_tokenizer(style: str, vocab: int = 320):
    """style llama: <s> BOS added to plain text, </s> EOS, <pad>, chat roles and <|end|>; gpt2: <|endoftext|> only, no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"] if style == "llama" else ["<|endoftext|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    if style == "llama":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                       additional_special_tokens=specials[3:])
        fast.chat_template = CHAT
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    return fast


def llama_policy(folder: Path) -> Path:
    """A Llama-style chat policy, untied embeddings, generation config with two stop tokens (</s> and <|end|>)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = make_tokenizer("llama")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=[tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")],
                     pad_token_id=tok.pad_token_id).save_pretrained(folder)
    return folder


def gpt2_policy(folder: Path) -> Path:
    """A GPT-2-style policy: tied embeddings, bos = eos = <|endoftext|>, no pad token anywhere."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_tokenizer("gpt2")
    torch.manual_seed(1)
    eot = tok.eos_token_id
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=2, n_positions=256, bos_token_id=eot,
                               eos_token_id=eot)).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert tok.pad_token_id is None
    return folder


def reward_model(folder: Path) -> Path:
    """A one-logit Llama-style reward model with a tokenizer of its own (another vocabulary) and a chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = make_tokenizer("llama", vocab=300)
    torch.manual_seed(2)
    LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                               num_attention_heads=2, num_key_value_heads=2, num_labels=1,
                                               pad_token_id=tok.pad_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def gold_classifier(folder: Path) -> Path:
    """A two-label GPT-2-style classifier (NEGATIVE / POSITIVE) without a pad token: the held-out gold (label POSITIVE)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tok = make_tokenizer("gpt2", vocab=290)
    torch.manual_seed(3)
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=1, n_head=2, n_positions=256, num_labels=2,
                                             id2label={0: "NEGATIVE", 1: "POSITIVE"}, label2id={"NEGATIVE": 0, "POSITIVE": 1},
                                             bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def prompt_rows(n: int = 40, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        rows.append({"prompt": f"question {i}: {q}", "answer": rng.choice(["paris", "seven", "blue"]), "id": i})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def preference_rows(n: int = 48, seed: int = 0) -> list[dict]:
    """Chosen responses repeat the vowel-rich words; rejected ones are consonant-heavy: a learnable preference."""
    rng = random.Random(seed)
    good, bad = ["really quite a area", "you owe a euro"], ["strength rhythm", "crypt glyph myth"]
    return [{"prompt": f"q {i}: {rng.choice(WORDS)}", "chosen": rng.choice(good), "rejected": rng.choice(bad)} for i in range(n)]


# -- reward functions (function scorers; the HTTP server serves one) --------------------------------------------------
def nan_reward(prompts, responses, **_):
    return [float("nan")] * len(responses)


def inf_reward(prompts, responses, **_):
    return [0.0] * (len(responses) - 1) + [float("inf")]


def short_reward(prompts, responses, **_):
    return [1.0] * (len(responses) - 1)


def failing_reward(prompts, responses, **_):
    raise RuntimeError("the judge is down")


def slow_reward(prompts, responses, **_):
    time.sleep(3)
    return [0.0] * len(responses)


def paced_vowels(prompts, responses, **_):
    """vowel_fraction, one second per call: a run is still going when a test stops the server."""
    from tasks.dataset.example_rewards import vowel_fraction

    time.sleep(1.0)
    return vowel_fraction(prompts, responses)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_reward_server(function: str, port: int | None = None, token: str | None = None) -> tuple[subprocess.Popen, str]:
    """`tether reward-server FUNCTION` as its own process on loopback; returns (process, URL of /get_reward) once it answers."""
    import httpx

    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    args = [sys.executable, "-m", "services.cli", "reward-server", function, "--port", str(port)]
    if token is not None:
        env["TETHER_TEST_RM_TOKEN"] = token
        args += ["--token-env", "TETHER_TEST_RM_TOKEN"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < 60:
        if proc.poll() is not None:
            raise RuntimeError(f"reward server exited: {proc.stdout.read()}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base + "/get_reward"
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("reward server did not answer within 60 s")
