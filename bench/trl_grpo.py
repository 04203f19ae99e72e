"""tether's GRPO vs TRL's GRPOTrainer on the same work, side by side in one process (issue 26: at least 1.5x TRL's GRPO),
and tether's GRPO vs tether's PPO.

Both GRPO sides: the default task's policy (a 4.5M-parameter Llama) as the policy and the KL reference, no value
network, one proxy reward model (member 0 of the default ensemble, the same checkpoint on both sides), 8 prompts x 8
samples per prompt = 64 completions of at most 48 tokens (temperature 1, no top-k/top-p, stopping at EOS), group
mean/std advantages, the clipped token-level surrogate (epsilon 0.2) with the per-token loss averaged over the tokens of
each minibatch (TRL's `dapo` loss type; tether's `loss_agg: token-mean`), the KL to the reference in the loss (k3,
beta 0.01), 4 epochs (TRL's num_iterations) of 4 minibatches of 16 (16 optimiser steps), Adam at the default task's
learning rate, the same torch threads. The rounds interleave and the first is discarded (warm-up); the table gives
per-phase medians. tether's PPO side does the PPO bench's work (bench/trl_side_by_side.py): 64 distinct prompts, GAE
with a separate value network, the KL in the reward.

- TRL's phases: rollout = `GRPOTrainer._generate` (transformers `generate`), score = `_calculate_rewards` (the reward
  model), learn = the rest (its old-log-prob and reference forward passes and the 16 steps).
- tether's: rollout = its vLLM engine, score = its reward model, learn = `PPOLearner.step` (old-log-prob and reference
  passes and the 16 steps), sync = the weights into vLLM.
- TRL tokenises the prompt texts itself: its prompts lack tether's leading EOS token (one token fewer per sequence).

Usage: python bench/trl_grpo.py [--rounds 5] [--threads 2] [--no-bf16] [--config default]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.tables import table  # noqa: E402
from bench.trl_side_by_side import BATCH, EPOCHS, MINIBATCH, Clock, TetherSide, interleaved, side_rows  # noqa: E402

N_PER_PROMPT = 8
BETA = 0.01


def grpo_config(cfg):
    """The default task's config as tether's GRPO at the bench's work."""
    from learner.config import validate_dict

    d = cfg.dump()
    d["ppo"] = {**d.get("ppo", {}), "advantage": "grpo", "batch_size": BATCH, "minibatch_size": MINIBATCH, "epochs": EPOCHS,
                "loss_agg": "token-mean"}
    d["kl"] = {"mode": "fixed", "coef": BETA, "placement": "loss", "estimator": "k3"}
    d["generation"] = {**d.get("generation", {}), "n_per_prompt": N_PER_PROMPT}
    return validate_dict(d, source="bench/trl_grpo.py")


class TRLGRPO:
    """TRL's GRPOTrainer on the task's models; ``iteration()`` is one generation batch of 64 and its 16 steps."""

    def __init__(self, cfg, paths, prompts: list[str], out: Path, bf16: bool = False):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        tok = AutoTokenizer.from_pretrained(str(paths.policy))
        tok.padding_side = "left"
        rtok = AutoTokenizer.from_pretrained(str(paths.proxies[0]))
        policy = AutoModelForCausalLM.from_pretrained(str(paths.policy), dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(str(paths.proxies[0]), num_labels=1, dtype=torch.float32)
        reward.config.pad_token_id = rtok.pad_token_id
        g, p = cfg.generation, cfg.ppo
        args = GRPOConfig(
            output_dir=str(out), report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
            per_device_train_batch_size=MINIBATCH, gradient_accumulation_steps=1, steps_per_generation=BATCH // MINIBATCH,
            num_generations=N_PER_PROMPT, num_iterations=EPOCHS, max_steps=EPOCHS * BATCH // MINIBATCH,
            max_completion_length=g.max_new_tokens, temperature=g.temperature, top_k=0, top_p=1.0,
            learning_rate=p.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=p.max_grad_norm,
            beta=BETA, epsilon=p.clip, loss_type="dapo", scale_rewards="group", seed=cfg.train.seed, bf16=bf16, fp16=False,
            shuffle_dataset=False,
        )
        data = Dataset.from_dict({"prompt": list(prompts)})  # TRL repeats each prompt num_generations times
        self.trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=args, train_dataset=data, processing_class=tok,
                                   reward_processing_classes=[rtok])
        self.clock = Clock()
        tr = self.trainer
        tr._generate = self.clock.wrap(tr._generate, lambda: "rollout")
        tr._calculate_rewards = self.clock.wrap(tr._calculate_rewards, lambda: "score")

    def iteration(self) -> dict[str, float]:
        self.clock.t = {}
        t = time.perf_counter()
        self.trainer.train()
        total = time.perf_counter() - t
        ph = dict(self.clock.t)
        return {"rollout": ph.get("rollout", 0.0), "score": ph.get("score", 0.0),
                "learn": total - ph.get("rollout", 0.0) - ph.get("score", 0.0), "sync": 0.0, "iteration": total}


class TetherGRPO(TetherSide):
    """tether's roles in this process at the GRPO work: 8 prompts x 8 samples, each row's group set as the driver sets it."""

    def __init__(self, cfg, paths, prompts: list[str], precision: str = "fp32"):
        super().__init__(grpo_config(cfg), paths, [q for q in prompts for _ in range(N_PER_PROMPT)], precision=precision)
        assert not any(n.startswith("value_head") for n, _ in self.learner.model.named_parameters())
        self.groups = [i // N_PER_PROMPT for i in range(len(self.prompts))]
        gen = self.engine.generate

        def grouped(prompts, *, seed, **kw):
            r = gen(prompts, seed=seed, **kw)
            r.groups = list(self.groups)
            return r

        self.engine.generate = grouped


def _trl_without_vllm() -> None:
    """TRL 1.12 supports vLLM 0.19-0.27; with this machine's vLLM (0.32, the CPU build) its GRPOTrainer fails at import
    (trl/generation/vllm_client.py imports an NCCL weight-transfer class that vLLM renamed). The bench runs TRL's
    transformers generation (`use_vllm` False, TRL's default) anyway: TRL is told vLLM is absent before it imports it."""
    import trl.import_utils as tiu

    tiu.is_vllm_available = lambda *a, **k: False


def run(rounds: int, threads: int, bf16: bool, config: str = "default") -> tuple[str, str]:
    import torch

    from learner.config import load_config
    from tasks import get_task

    try:
        _trl_without_vllm()
        from trl import GRPOTrainer  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"TRL is not installed ({e}): pip install -e '.[bench]'")
    torch.set_num_threads(threads)
    cfg = load_config(config).expand()[0]
    task = get_task(cfg)
    paths = task.resolve(cfg_source=config)
    prompts = task.prompts("train", BATCH // N_PER_PROMPT, seed=11).texts  # 8 distinct prompts
    ppo_prompts = task.prompts("train", BATCH, seed=11).texts  # PPO's 64 distinct prompts
    head = (f"tether GRPO vs TRL {__import__('trl').__version__} GRPOTrainer ({os.cpu_count()} cores, {threads} torch threads, "
            f"policy {paths.policy}, proxy {paths.proxies[0]})")
    with tempfile.TemporaryDirectory() as d:
        sides = {"TRL GRPOTrainer": TRLGRPO(cfg, paths, prompts, Path(d) / "fp32"),
                 "tether GRPO (matched work)": TetherGRPO(cfg, paths, prompts),
                 "tether PPO (64 prompts, value network)": TetherSide(cfg, paths, ppo_prompts)}
        if bf16:  # both GRPO sides in bf16 autocast (TRL: accelerate's bf16; tether: runtime.learner.precision bf16)
            sides["TRL GRPOTrainer, bf16"] = TRLGRPO(cfg, paths, prompts, Path(d) / "bf16", bf16=True)
            sides["tether GRPO (matched work), bf16"] = TetherGRPO(cfg, paths, prompts, precision="bf16")
        _, med = interleaved(sides, rounds)
    rows = side_rows(med, "TRL GRPOTrainer")
    text = table(f"matched work: seconds per iteration (64 completions, 16 optimiser steps), median of rounds 2..{rounds} "
                 "(interleaved; fp32 unless named)", rows,
                 ("side", "rollout", "score", "learn", "sync", "iteration", "vs TRL fp32", "vs TRL, same precision"))
    return text, head


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-bf16", action="store_true", help="only the fp32 sides (tether's default precision)")
    ap.add_argument("--config", default="default", help="the task (a preset or YAML; its assets built): default is the benchmark, "
                    "tiny a smoke run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "trl_grpo_results.md"))
    args = ap.parse_args()
    if args.rounds < 2:
        raise SystemExit("--rounds must be >= 2: the first round is discarded as warm-up")
    text, head = run(args.rounds, args.threads, not args.no_bf16, args.config)
    print(text, flush=True)
    Path(args.out).write_text(f"# {head}, {time.strftime('%Y-%m-%d %H:%M')}\n{text}\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
