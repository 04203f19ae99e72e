"""The PPO learn phase's speed-ups, each one's share, side by side in one process.

One batch of 64 rollouts x 48 tokens from the default task's policy (sampled once, scored with fixed numbers), the
default config's PPO learner (separate value network, 4 epochs of 4 minibatches of 16). Every variant has its own
learner from the same weights; the rounds interleave the variants and the first round is discarded. Variants: none
of learner.models.policy.LearnSpeedups (the baseline: the learner before issue 14), each one alone, all of them (what
every run uses), all with bf16 autocast (runtime.learner.precision: bf16), and with --compile, all with
runtime.learner.compile in fp32 and in bf16 (their compile time reported apart).

Usage: python bench/learn_phase.py [--rounds 4] [--threads 2] [--compile]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.tables import table  # noqa: E402


def main(argv=None) -> tuple[str, dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile of the transformers (minutes of compiling on a CPU)")
    args = ap.parse_args(argv)
    if args.rounds < 2:
        raise SystemExit("--rounds must be >= 2: the first round is discarded as warm-up")
    import torch
    from tqdm import tqdm

    from learner.config import load_config
    from learner.learners import make_learner
    from learner.models import policy as P
    from learner.models.engine import TransformersEngine
    from learner.types import ScoredRollouts
    from tasks import get_task

    torch.set_num_threads(args.threads)
    cfg = load_config("default").expand()[0]
    task = get_task(cfg)
    paths = task.resolve(cfg_source="default")
    prompts = task.prompts("train", cfg.ppo.batch_size, seed=5).texts
    r = TransformersEngine.from_path(paths.policy, cfg.generation).generate(prompts, seed=0)
    B = len(r)
    scored = ScoredRollouts(r, [[0.0]] * B, [float(i % 7) / 7 for i in range(B)], [0.0] * B)
    none = P.LearnSpeedups(**{f.name: False for f in dataclasses.fields(P.LearnSpeedups)})
    variants: dict[str, tuple[P.LearnSpeedups, str, str]] = {"none (baseline)": (none, "fp32", "sdpa")}
    for f in dataclasses.fields(none):
        variants[f"+ {f.name}"] = (dataclasses.replace(none, **{f.name: True}), "fp32", "sdpa")
    variants["all (every run)"] = (P.LearnSpeedups(), "fp32", "sdpa")
    variants["all + bf16 autocast"] = (P.LearnSpeedups(), "bf16", "sdpa")
    variants["all + bf16 autocast, eager attention"] = (P.LearnSpeedups(), "bf16", "eager")
    learners, compile_s = {}, None
    for name, (sp, prec, attn) in variants.items():
        P.SPEEDUPS.__dict__.update(dataclasses.asdict(sp))
        c = cfg.model_copy(deep=True)
        c.runtime.learner.precision = prec
        learners[name] = lrn = make_learner(c, paths.policy, device="cpu")
        if attn != "sdpa":
            for m in (lrn.model.lm, lrn.model.critic, lrn.ref):
                m.set_attn_implementation(attn)
    if args.compile:  # runtime.learner.compile: the bodies compiled in place (learner.models.policy.compile_bodies)
        P.SPEEDUPS.__dict__.update(dataclasses.asdict(P.LearnSpeedups()))
        compile_s = {}
        for name, prec in (("all + compile", "fp32"), ("all + bf16 autocast + compile", "bf16")):
            c = cfg.model_copy(deep=True)
            c.runtime.learner.precision, c.runtime.learner.compile = prec, True
            lc = make_learner(c, paths.policy, device="cpu")
            t = time.perf_counter()
            with lc.autocast():
                lc.step(scored)  # compiles
            compile_s[name] = time.perf_counter() - t
            variants[name] = (P.LearnSpeedups(), prec, "sdpa")
            learners[name] = lc
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in tqdm(range(args.rounds), desc="interleaved rounds", unit="round"):
        for name, (sp, _, _) in variants.items():
            P.SPEEDUPS.__dict__.update(dataclasses.asdict(sp))
            lrn = learners[name]
            t = time.perf_counter()
            with lrn.autocast():
                lrn.step(scored)
            times[name].append(time.perf_counter() - t)
    P.SPEEDUPS.__dict__.update(dataclasses.asdict(P.LearnSpeedups()))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    base = med["none (baseline)"]
    rows = [(k, f"{m:.2f}", f"{base / m:.2f}x", f"{100 * (base - m) / base:+.0f}%") for k, m in med.items()]
    title = (f"learn phase: seconds per PPO iteration ({B} rollouts x {cfg.generation.max_new_tokens} tokens, {cfg.ppo.epochs} epochs of "
             f"minibatch {cfg.ppo.minibatch_size}, separate value network), median of rounds 2..{args.rounds}, {args.threads} threads")
    out = table(title, rows, ("variant", "s", "vs baseline", "time saved"))
    if compile_s:
        out += "\n(runtime.learner.compile: the first step, compiling included, took " + ", ".join(f"{v:.0f} s ({k})" for k, v in compile_s.items()) + ")"
    return out, med


if __name__ == "__main__":
    text, _ = main()
    print(text)
