"""tether benchmarks: prints a table; every figure is measured side by side with its named baseline.

  1. rollout tokens/s: vLLM vs transformers `generate` (same model, prompts, sampling with log-probs)
  1b. the rollout with and without Intel's OpenMP runtime preloaded (bench/rollout_preload.py)
  2. weight sync at 4.5M and 135M parameters, each path against a plain memcpy of the same bytes (bench/weight_sync.py)
  3. seconds per PPO iteration split into rollout / reward+gold / learn / sync (the Ray runtime)
  4. peak memory (PSS, all processes) of the default `make run` job
  5. the learn phase's speed-ups, each one's share (bench/learn_phase.py)
  6. tether vs TRL's PPOTrainer: matched work interleaved in this process, the default job of section 3 against the same
     TRL median, and the roofline (bench/trl_side_by_side.py; TRL from the `bench` extra)
  7. warm vs cold sweep cells: seconds per cell, the start's share, cells per hour (bench/warm_sweep.py)

Usage: python bench/run_all.py [--config default] [--iterations 6] [--skip-job] [--skip-trl] [--skip-warm] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.tables import table  # noqa: E402


def measure_rollout(cfg, policy_path: Path, repeats: int = 3) -> tuple[dict, dict]:
    """tokens/s of transformers `generate` and vLLM (rounds interleaved) at 64 and 256 prompts; and the engines."""
    import torch

    from actors.vllm_engine import VLLMEngine
    from learner.models.engine import TransformersEngine
    from tasks import get_task

    torch.set_num_threads(1)  # one thread each, as the rollout actor runs
    prompts = get_task(cfg).prompts("heldout", 64, seed=5).texts
    hf = TransformersEngine.from_path(policy_path, cfg.generation)
    hf.generate(prompts[:4], seed=0)  # warm-up
    t0 = time.perf_counter()
    vllm = VLLMEngine(policy_path, cfg.generation, kv_cache_gib=cfg.runtime.kv_cache_gib)
    startup = time.perf_counter() - t0
    res = {}
    for n_prompts in (64, 256):  # 64 = the PPO batch of the default job; 256 shows how the gap scales
        ps = (prompts * 4)[:n_prompts]
        rates = {"transformers generate": [], "vLLM": []}
        for i in range(repeats):
            for name, eng in (("transformers generate", hf), ("vLLM", vllm)):
                t = time.perf_counter()
                r = eng.generate(ps, seed=100 + i)
                rates[name].append(sum(len(x) for x in r.response_ids) / (time.perf_counter() - t))
        for name, v in rates.items():
            res[f"{n_prompts}/{name}"] = statistics.median(v)
    return res, {"vllm": vllm, "hf": hf, "vllm_startup_s": startup}


def bench_rollout(cfg, policy_path: Path, repeats: int = 3) -> tuple[list[tuple], dict]:
    """Section 1: vLLM with its engine core in a child process (vLLM's default; runtime.vllm_engine_core: process) here, and
    with the engine core in the calling process (in_actor: tether's default under Ray, vllm_engine_core: auto) in a
    subprocess of its own, each against transformers."""
    import json

    res, eng = measure_rollout(cfg, policy_path, repeats)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}  # vLLM's CPU worker then owns that process's torch threads
    out = subprocess.run([sys.executable, str(Path(__file__)), "--rollout-probe", "--config", "default"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    lines = [x for x in out.stdout.splitlines() if x.startswith("PROBE ")]
    probe = json.loads(lines[-1][len("PROBE "):]) if lines else None
    rows = []
    for n in (64, 256):
        hf = res[f"{n}/transformers generate"]
        rows.append((n, "transformers generate", f"{hf:,.0f}", "1.00x"))
        rows.append((n, "vLLM (engine core in a child process, vLLM's default: vllm_engine_core: process)", f"{res[f'{n}/vLLM']:,.0f}", f"{res[f'{n}/vLLM'] / hf:.2f}x"))
        if probe:
            hf2 = probe[f"{n}/transformers generate"]
            rows.append((n, "transformers generate (in the probe process)", f"{hf2:,.0f}", "1.00x"))
            rows.append((n, "vLLM, engine core in the process (in_actor: tether's default under Ray)", f"{probe[f'{n}/vLLM']:,.0f}",
                         f"{probe[f'{n}/vLLM'] / hf2:.2f}x"))
    if probe is None:
        rows.append(("-", f"in-process engine core probe failed: {out.stderr[-300:]!r}", "", ""))
    return rows, eng


def bench_collective(vllm, sd: dict, timed, bucket_mb: float = 64.0) -> float:
    """This process as rank 0 and the engine's vLLM worker process as rank 1 of a gloo weight group; one sync =
    the broadcast and the worker's in-place reload, both finished."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from actors.collective import describe, free_port, send, stateless_group, with_tied_head

    named = with_tied_head(sd)
    meta, port = describe(named), free_port()
    version = [1000]
    with ThreadPoolExecutor(1) as pool:
        joined = pool.submit(vllm.join_weight_group, "gloo", "127.0.0.1", port, 1, 2)
        pg = stateless_group("gloo", "127.0.0.1", port, 0, 2)
        joined.result()

        def via_collective():
            version[0] += 1
            done = pool.submit(vllm.receive_collective, meta, bucket_mb, version[0])
            send(pg, named, bucket_mb, torch.device("cpu"))
            done.result()

        return timed(via_collective)


class PeakPSS(threading.Thread):
    """Samples the PSS of a process and all its descendants (Ray workers, vLLM helpers) every 0.5 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            try:
                root = psutil.Process(self.pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            total = 0
            for p in procs:
                try:
                    total += p.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.5)


def bench_job(config: str, iterations: int, runs_dir: Path, sets: tuple[str, ...] = ()) -> tuple[list[tuple], float, list]:
    """The default job (Ray + vLLM), shortened (``sets``: more --set overrides); returns per-phase seconds and the peak PSS in GiB."""
    from bench.trl_side_by_side import job_medians, train_cmd

    proc = subprocess.Popen(train_cmd(config, iterations, runs_dir, sets), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mon = PeakPSS(proc.pid)
    mon.start()
    out, _ = proc.communicate()
    mon.stop.set()
    if proc.returncode != 0:
        raise SystemExit(f"the job failed:\n{out[-3000:]}")

    phases = ("time_s/rollout", "time_s/reward_and_gold", "time_s/learn", "time_s/sync", "time_s/gold_eval", "time_s/iteration")
    runs = job_medians(runs_dir)
    rows = [(name, *(f"{med[k]:.2f}" for k in phases), f"{100 * med['time_s/sync'] / med['time_s/iteration']:.1f}%") for name, med in runs]
    return rows, mon.peak / 2**30, runs


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="default")
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--skip-job", action="store_true", help="skip the per-iteration split and the peak-memory run")
    ap.add_argument("--skip-trl", action="store_true", help="skip sections 5-6 (the learn phase's shares, the TRL side-by-side)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of sections 5-6 (the first is discarded)")
    ap.add_argument("--skip-warm", action="store_true", help="skip section 7 (warm vs cold sweep cells)")
    ap.add_argument("--rollout-probe", action="store_true", help=argparse.SUPPRESS)  # section 1's in-process engine core, in its own process
    args = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from learner.config import load_config
    from tasks import get_task

    cfg = load_config(args.config).expand()[0]
    paths = get_task(cfg).resolve(cfg_source=args.config)
    if args.rollout_probe:
        import json

        res, eng = measure_rollout(cfg, Path(paths.policy))
        eng["vllm"].close()
        print("PROBE " + json.dumps(res), flush=True)
        return 0
    report = [f"# tether benchmarks ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, policy {paths.policy})"]
    rows, eng = bench_rollout(cfg, Path(paths.policy))
    report.append(table(f"1. rollout throughput, {cfg.generation.max_new_tokens} new tokens, sampling + log-probs, median of 3 (vLLM start-up {eng['vllm_startup_s']:.0f}s)",
                        rows, ("prompts", "engine", "tokens/s", "vs transformers")))
    print(report[-1], flush=True)
    from bench import rollout_preload  # vLLM's LD_PRELOAD advice, each arm in a process of its own

    pre_rows, _ = rollout_preload.measure(args.config, 2)
    report.append(table("1b. rollout with and without libiomp5 preloaded (vLLM engine core in the process; median of 2 processes per arm)",
                        pre_rows, ("prompts", "LD_PRELOAD", "transformers", "vLLM", "vLLM vs transformers", "vLLM vs no preload",
                                   "libiomp warning")))
    print(report[-1], flush=True)
    eng["vllm"].close()
    del eng
    from bench import weight_sync  # both sizes, each in a process of its own (its engine core in that process)

    text, _ = weight_sync.main(["--config", args.config])
    report.append(text.replace("\n## ", "\n## 2. ", 1))
    job_runs = []
    if not args.skip_job:
        with tempfile.TemporaryDirectory() as d:
            rows, peak, job_runs = bench_job(args.config, args.iterations, Path(d))
        report.append(table(f"3. seconds per PPO iteration (median over iterations 2..{args.iterations}, Ray + vLLM)", rows,
                            ("run", "rollout", "reward+gold", "learn", "sync", "eval (when run)", "iteration", "sync share")))
        print(report[-1], flush=True)
        report.append(f"\n## 4. peak memory of `tether train {args.config}` (PSS, driver + Ray + vLLM processes): {peak:.2f} GiB (target < 8 GiB)")
        print(report[-1], flush=True)
    out = ROOT / "bench" / "results.md"
    if args.skip_job and out.exists() and "## 3." in out.read_text():  # keep the last measured job tables
        old = out.read_text()
        report.append("\n(sections 3-4 from an earlier run)\n" + old[old.index("## 3."):old.index("## 5.") if "## 5." in old else None].rstrip())
    if not args.skip_trl:
        from bench import learn_phase, trl_side_by_side as trl

        text, _ = learn_phase.main(["--rounds", str(max(args.rounds - 1, 2))])
        report.append(text.replace("\n## ", "\n## 5. ", 1))
        print(report[-1], flush=True)
        text, med, head = trl.matched(args.rounds, 2)
        report.append(f"\n## 6. {head}" + text.replace("\n## ", "\n### "))
        if job_runs:
            report.append(trl.table(f"6b. default work: section 3's job (Ray + vLLM, 5 reward models, gold + drift of every batch), without "
                                    "its held-out evaluation, against the TRL median above", trl.default_rows(job_runs, med["TRL PPOTrainer"]["iteration"]),
                                    trl.DEFAULT_HEADER))
            print("\n".join(report[-2:]), flush=True)
            with tempfile.TemporaryDirectory() as d:  # the same job with the learner's fastest settings, against TRL in bf16
                _, _, fast_runs = bench_job(args.config, args.iterations, Path(d), trl.FAST_SETS)
            report.append(trl.table(f"6c. default work, {' '.join(trl.FAST_SETS)}: section 3's job again (its first iteration, which "
                                    "compiles, left out like every first iteration), against the TRL bf16 median above",
                                    trl.default_rows(fast_runs, med["TRL PPOTrainer, bf16"]["iteration"]), trl.DEFAULT_HEADER))
        print("\n".join(report[-2:]), flush=True)
    if not args.skip_warm:  # in a process of its own: its cells start Ray as a sweep does
        with tempfile.TemporaryDirectory() as d:
            warm = subprocess.run([sys.executable, str(ROOT / "bench" / "warm_sweep.py"), "--config", args.config, "--cells", "3",
                                   "--iterations", "2", "--rounds", "2", "--out", str(Path(d) / "warm.md")], capture_output=True, text=True, cwd=ROOT)
            if warm.returncode != 0:
                raise RuntimeError(f"bench/warm_sweep.py failed:\n{warm.stderr[-3000:]}")
            text = (Path(d) / "warm.md").read_text()
        report.append(text.replace("\n## ", "\n## 7. ", 1).rstrip())
        print(report[-1], flush=True)
    out.write_text("\n".join(report) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
