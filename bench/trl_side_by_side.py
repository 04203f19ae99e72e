"""tether vs TRL's PPOTrainer on the same work, side by side in one process (issue: beat TRL's PPO by 1.5x).

Both sides: the default task's policy (a 4.5M-parameter Llama) as the policy and the KL reference, a separate value
network started from it, one proxy reward model (member 0 of the default ensemble, the same checkpoint on both
sides), 64 prompts x 48 sampled tokens (temperature 1, no top-k/top-p), 4 PPO epochs of 4 minibatches of 16 (16
optimiser steps), fp32, the same torch threads. The rounds interleave (TRL iteration, tether iteration, ...) and the
first round is discarded (warm-up); the table gives per-phase medians.

- **matched work**: tether's own components in this process (the vLLM rollout engine, the reward model, the PPO
  learner, the weight sync into vLLM), exactly TRL's work: one reward model, no gold, no drift.
- **default work**: `tether train default` through Ray actors and vLLM (five reward models, gold and drift scores of
  every training batch), its median iteration without the held-out evaluation (TRL has none), against the TRL
  median of the same run.
- **roofline**: this CPU's matmul FLOP/s at the model's shapes, and the learn phase's achieved FLOP/s.

TRL 1.12 is the last release with the PPO trainer (`trl.experimental.ppo`); it comes with `pip install -e '.[bench]'`.
Its phases: rollout = `generate` (it takes the old log-probs from generation's scores), score = the reference,
value and reward forward passes, learn = the PPO epochs with GAE. tether's learn phase also holds its old-log-prob,
value and reference forward passes (one pass each per batch).

Usage: python bench/trl_side_by_side.py [--rounds 5] [--threads 2] [--skip-default] [--default-iterations 6]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.tables import table  # noqa: E402

BATCH, MINIBATCH, EPOCHS = 64, 16, 4


class Clock:
    """Seconds spent per phase in the current iteration."""

    def __init__(self):
        self.t: dict[str, float] = {}

    def add(self, phase: str, dt: float) -> None:
        self.t[phase] = self.t.get(phase, 0.0) + dt

    def wrap(self, fn, phase_of):
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.add(phase_of(), time.perf_counter() - t)
        return timed


CLOCK = Clock()  # TRL's phases: one clock, since its helpers are module functions (sides run one at a time)


def _timed(fn, phase_of):
    return CLOCK.wrap(fn, phase_of)


class TRLSide:
    """TRL 1.12's PPOTrainer on the task's models; ``iteration()`` runs one PPO iteration (one batch of 64)."""

    def __init__(self, cfg, paths, prompt_ids: list[list[int]], out: Path, bf16: bool = False):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
        from trl.experimental.ppo import PPOConfig, PPOTrainer
        from trl.experimental.ppo import ppo_trainer as pt

        tok = AutoTokenizer.from_pretrained(str(paths.policy))
        tok.padding_side = "left"
        # TRL masks every pad-id token, and this tokenizer's one special token is pad = EOS = BOS: the prompts go in
        # without tether's EOS prefix (one token fewer per sequence on TRL's side) and no stop token ends a response.
        data = Dataset.from_dict({"input_ids": [p[1:] if p and p[0] == tok.pad_token_id else p for p in prompt_ids]})
        policy = AutoModelForCausalLM.from_pretrained(str(paths.policy), dtype=torch.float32)
        ref = AutoModelForCausalLM.from_pretrained(str(paths.policy), dtype=torch.float32)
        value = AutoModelForSequenceClassification.from_pretrained(str(paths.policy), num_labels=1, dtype=torch.float32)
        reward = AutoModelForSequenceClassification.from_pretrained(str(paths.proxies[0]), dtype=torch.float32)
        for m in (policy, ref, value, reward):
            m.config.pad_token_id = tok.pad_token_id
        p, k = cfg.ppo, cfg.kl
        args = PPOConfig(
            output_dir=str(out), report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True, use_cpu=True,
            per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=BATCH // MINIBATCH,
            num_ppo_epochs=EPOCHS, local_rollout_forward_batch_size=BATCH, total_episodes=BATCH, response_length=cfg.generation.max_new_tokens,
            temperature=cfg.generation.temperature, learning_rate=p.lr, lr_scheduler_type="constant", kl_coef=k.coef,
            kl_estimator="k1", vf_coef=p.value_coef, cliprange=p.clip, cliprange_value=p.value_clip, gamma=p.gamma, lam=p.lam,
            stop_token=None, missing_eos_penalty=None, num_sample_generations=0, seed=cfg.train.seed, bf16=bf16, fp16=False,
        )
        self.trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                                  train_dataset=data, eval_dataset=data, value_model=value)
        self.clock = CLOCK
        # per-phase time: wrap the module-level helpers train() calls (looked up at call time), once per process
        if not getattr(pt, "_tether_timed", False):
            pt.batch_generation = _timed(pt.batch_generation, lambda: "rollout")
            pt.get_reward = _timed(pt.get_reward, lambda: "score")
            pt.forward = _timed(pt.forward, lambda: "learn fwd" if torch.is_grad_enabled() else "score")
            pt._tether_timed = True

    def iteration(self) -> dict[str, float]:
        self.clock.t = {}
        t = time.perf_counter()
        self.trainer.train()
        total = time.perf_counter() - t
        ph = dict(self.clock.t)
        return {"rollout": ph.get("rollout", 0.0), "score": ph.get("score", 0.0),
                "learn": total - ph.get("rollout", 0.0) - ph.get("score", 0.0), "sync": 0.0, "iteration": total}


class TetherSide:
    """tether's roles in this process at TRL's work: vLLM rollout, one reward model, the PPO learner, weight sync."""

    def __init__(self, cfg, paths, prompts: list[str], precision: str = "fp32", compile: bool = False):
        from actors.vllm_engine import VLLMEngine
        from learner.learners import make_learner
        from learner.models.reward import RewardModel

        self.cfg, self.prompts = cfg, prompts
        self.engine = VLLMEngine(paths.policy, cfg.generation, kv_cache_gib=cfg.runtime.kv_cache_gib)
        self.reward = RewardModel.load(paths.proxies[0], max_len=cfg.proxy.max_len)
        c = cfg.model_copy(deep=True)
        c.runtime.learner.precision = precision
        c.runtime.learner.compile = compile  # torch.compile of the transformer bodies: the first learn phase compiles
        self.learner = make_learner(c, paths.policy, device="cpu")
        self.seed = 0

    def iteration(self) -> dict[str, float]:
        import torch

        from learner.types import ScoredRollouts

        out = {}
        t0 = t = time.perf_counter()
        self.seed += 1
        r = self.engine.generate(self.prompts, seed=self.seed)
        out["rollout"] = time.perf_counter() - t
        t = time.perf_counter()
        s = self.reward.score(r.texts).tolist()
        sc = ScoredRollouts(r, [[x] for x in s], s, [0.0] * len(s))
        out["score"] = time.perf_counter() - t
        t = time.perf_counter()
        with self.learner.autocast():  # runtime.learner.precision, as the learner role runs it
            self.learner.step(sc)
        out["learn"] = time.perf_counter() - t
        t = time.perf_counter()
        self.engine.load_weights(self.learner.policy_state_dict(), self.learner.version)
        out["sync"] = time.perf_counter() - t
        out["iteration"] = time.perf_counter() - t0
        return out


def interleaved(sides: dict, rounds: int) -> tuple[dict[str, list[dict]], dict[str, dict[str, float]]]:
    """Each side's ``iteration()`` once per round, the sides in turn; then tether's engines closed. Returns every round's
    phase seconds per side and their medians over rounds 2.. (round 1 is warm-up)."""
    from tqdm import tqdm

    res: dict[str, list[dict]] = {k: [] for k in sides}
    for _ in tqdm(range(rounds), desc="interleaved rounds (TRL, tether)", unit="round"):
        for name, side in sides.items():
            res[name].append(side.iteration())
    for side in sides.values():
        if isinstance(side, TetherSide):
            side.engine.close()
    return res, {k: {ph: statistics.median(x[ph] for x in v[1:]) for ph in v[0]} for k, v in res.items()}


def side_rows(med: dict[str, dict[str, float]], trl: str) -> list[tuple]:
    """Table rows: each side's phase medians, its speed against TRL fp32 (side ``trl``) and against TRL at its own precision
    (``trl + ", bf16"`` for a bf16 side)."""
    base = med[trl]["iteration"]
    same = lambda k: med[f"{trl}, bf16" if "bf16" in k else trl]["iteration"]  # noqa: E731
    return [(k, *(f"{m[ph]:.2f}" for ph in ("rollout", "score", "learn", "sync", "iteration")), f"{base / m['iteration']:.2f}x",
             f"{same(k) / m['iteration']:.2f}x") for k, m in med.items()]


def roofline(cfg, paths, threads: int, learn_s: float, mean_prompt: float) -> list[tuple]:
    """Matmul FLOP/s at the model's shapes (one minibatch's tokens) and the learn phase's achieved FLOP/s."""
    import torch
    from transformers import AutoConfig

    mc = AutoConfig.from_pretrained(str(paths.policy))
    H, F, V, nl = mc.hidden_size, mc.intermediate_size, mc.vocab_size, mc.num_hidden_layers
    R = cfg.generation.max_new_tokens
    L = mean_prompt + R
    rows_mb = int(MINIBATCH * L)
    rows = []
    peak = 0.0
    for name, (m, k, n) in {"attention projection": (rows_mb, H, H), "MLP up / gate": (rows_mb, H, F), "MLP down": (rows_mb, F, H),
                            "LM head": (MINIBATCH * R, H, V)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        n_rep = 20
        t = time.perf_counter()
        for _ in range(n_rep):
            a @ b
        fl = 2 * m * k * n * n_rep / (time.perf_counter() - t)
        peak = max(peak, fl)
        rows.append((f"matmul fp32 {m}x{k} @ {k}x{n} ({name})", f"{fl / 1e9:.0f}", ""))
    # learn-phase FLOPs: linear layers (2 FLOPs per weight per token), attention scores (4 L H per token per layer)
    per_layer = 4 * H * H + 3 * H * F
    fwd_body = 2 * L * (nl * per_layer + nl * 2 * L * H)  # per sequence, one transformer body
    fwd_head = 2 * (R + 1) * H * V  # the LM head on the response positions
    per_seq_no_grad = 2 * fwd_body + fwd_head + (fwd_body + fwd_head)  # policy + critic, then the reference
    per_seq_train = 3 * (2 * fwd_body + fwd_head)  # forward + backward (2x) of policy and critic
    flops = BATCH * per_seq_no_grad + EPOCHS * BATCH * per_seq_train
    rows.append((f"learn phase, {flops / 1e9:.0f} GFLOP in {learn_s:.2f} s", f"{flops / learn_s / 1e9:.0f}",
                 f"{100 * flops / learn_s / peak:.0f}% of the best matmul"))
    return rows


def require_trl() -> None:
    try:
        import trl  # noqa: F401
        from trl.experimental.ppo import PPOTrainer  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"TRL's PPO trainer is not installed ({e}): pip install -e '.[bench]' (trl==1.12.0, its last release with PPO)")


def matched(rounds: int, threads: int, bf16: bool = True, compile: bool = True) -> tuple[str, dict, str]:
    """Interleaved rounds of TRL and tether at matched work: (the table, per-side phase medians, the header line)."""
    import torch

    from learner.config import load_config
    from learner.models.tokenizer import encode_prompts
    from tasks import get_task

    require_trl()
    torch.set_num_threads(threads)
    cfg = load_config("default").expand()[0]
    task = get_task(cfg)
    paths = task.resolve(cfg_source="default")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(paths.policy))
    prompts = task.prompts("train", BATCH, seed=11).texts
    prompt_ids = encode_prompts(tok, prompts)
    mean_prompt = statistics.mean(len(p) for p in prompt_ids)
    head = (f"tether vs TRL {__import__('trl').__version__} PPOTrainer ({os.cpu_count()} cores, {threads} torch threads, "
            f"policy {paths.policy}, proxy {paths.proxies[0]})")
    with tempfile.TemporaryDirectory() as d:
        sides = {"TRL PPOTrainer": TRLSide(cfg, paths, prompt_ids, Path(d) / "fp32"), "tether (matched work)": TetherSide(cfg, paths, prompts)}
        if compile:  # runtime.learner.compile (TRL's PPOTrainer has no compile option); round 1 compiles and is discarded
            sides["tether (matched work), compile"] = TetherSide(cfg, paths, prompts, compile=True)
        if bf16:  # both sides in bf16 autocast (TRL: accelerate's bf16 mixed precision; tether: runtime.learner.precision bf16)
            sides["TRL PPOTrainer, bf16"] = TRLSide(cfg, paths, prompt_ids, Path(d) / "bf16", bf16=True)
            sides["tether (matched work), bf16"] = TetherSide(cfg, paths, prompts, precision="bf16")
            if compile:
                sides["tether (matched work), bf16 + compile"] = TetherSide(cfg, paths, prompts, precision="bf16", compile=True)
        res, med = interleaved(sides, rounds)
    rows = side_rows(med, "TRL PPOTrainer")
    text = table(f"matched work: seconds per PPO iteration, median of rounds 2..{rounds} (interleaved)", rows,
                 ("side", "rollout", "score", "learn", "sync", "iteration", "vs TRL fp32", "vs TRL, same precision"))
    warm = [f"{k}: {v[0]['learn']:.0f} s" for k, v in res.items() if k.endswith("compile")]
    if warm:
        text += ("\n(compile sides: round 1's learn phase compiled the bodies, " + "; ".join(warm) + "; discarded like every side's "
                 "round 1. The compile is paid once per learner process; with a warm on-disk cache it is shorter)")
    text += "\n" + table("roofline", roofline(cfg, paths, threads, med["tether (matched work)"]["learn"], mean_prompt), ("what", "GFLOP/s", ""))
    return text, med, head


def default_rows(runs: list[tuple[str, dict]], trl_it: float) -> list[tuple]:
    """Rows for the default job's runs (name, phase medians with "iteration w/o eval") against TRL's iteration."""
    return [(name, *(f"{m[k]:.2f}" for k in ("time_s/rollout", "time_s/reward_and_gold", "time_s/learn", "time_s/sync", "iteration w/o eval")),
             f"{trl_it / m['iteration w/o eval']:.2f}x") for name, m in runs]


DEFAULT_HEADER = ("run", "rollout", "reward+gold", "learn", "sync", "iteration w/o eval", "speed vs TRL")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-default", action="store_true", help="skip the default-work run (Ray + vLLM, five reward models, gold)")
    ap.add_argument("--default-iterations", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "bench" / "trl_results.md"))
    args = ap.parse_args()
    if args.rounds < 2:
        raise SystemExit("--rounds must be >= 2: the first round is discarded as warm-up")
    text, med, head = matched(args.rounds, args.threads)
    report = [f"# {head}, {time.strftime('%Y-%m-%d %H:%M')}", text]
    print(text, flush=True)
    if not args.skip_default:
        with tempfile.TemporaryDirectory() as d:
            runs = default_work(args.default_iterations, Path(d))
        report.append(table(f"default work: `tether train default` (Ray + vLLM, 5 reward models, gold + drift of every batch), "
                            f"median over iterations 2..{args.default_iterations} without the held-out evaluation",
                            default_rows(runs, med["TRL PPOTrainer"]["iteration"]), DEFAULT_HEADER))
        print(report[-1], flush=True)
        with tempfile.TemporaryDirectory() as d:
            runs = default_work(args.default_iterations, Path(d), FAST_SETS)
        report.append(table(f"default work, {' '.join(FAST_SETS)} (the first iteration compiles and is left out), against TRL bf16",
                            default_rows(runs, med["TRL PPOTrainer, bf16"]["iteration"]), DEFAULT_HEADER))
        print(report[-1], flush=True)
    Path(args.out).write_text("\n".join(report) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


def job_medians(runs_dir: Path) -> list[tuple[str, dict]]:
    """Per run of a finished job: the median of each phase over iterations 2.. and of the iteration without its
    held-out evaluation (the first iteration is left out: it includes warm-up)."""
    from services.state.runlog import read_metrics

    out = []
    for run in sorted(p for p in runs_dir.glob("*/*") if (p / "metrics.jsonl").exists()):
        ms = [m for m in read_metrics(run) if "time_s/iteration" in m][1:]
        if not ms:
            continue
        # the held-out evaluation runs every train.eval_every iterations: its median is over the iterations that ran one
        med = {k: statistics.median([m[k] for m in ms if k in m] or [0.0]) for k in
               ("time_s/rollout", "time_s/reward_and_gold", "time_s/learn", "time_s/sync", "time_s/gold_eval", "time_s/iteration")}
        med["iteration w/o eval"] = statistics.median([m["time_s/iteration"] - m.get("time_s/gold_eval", 0.0) for m in ms])
        out.append((run.name, med))
    return out


FAST_SETS = ("runtime.learner.precision=bf16", "runtime.learner.compile=true")  # the default job's fastest learner settings


def train_cmd(config: str, iterations: int, runs_dir: Path, sets: tuple[str, ...] = ()) -> list[str]:
    """`tether train CONFIG`, shortened to ``iterations``, into ``runs_dir``, with more ``--set`` overrides (``sets``)."""
    cmd = [sys.executable, "-m", "services.cli", "train", config, "--set", f"train.iterations={iterations}", "--set", f"runs_dir={runs_dir}"]
    for kv in sets:
        cmd += ["--set", kv]
    return cmd


def default_work(iterations: int, runs_dir: Path, sets: tuple[str, ...] = ()) -> list[tuple[str, dict]]:
    import subprocess

    proc = subprocess.run(train_cmd("default", iterations, runs_dir, sets), cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the default job failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return job_medians(runs_dir)


if __name__ == "__main__":
    sys.exit(main())
