"""Warm actors across sweep cells against the same cells started cold: seconds per cell, the start's share, and cells per
hour at the reproduction's budget (services/driver/warm.py).

Each arm runs the same cells (one PPO cell per seed, the default Ray + vLLM runtime, default precision fp32, no compile)
in folders of its own, one after the other in this process, as `tether sweep` runs them: cold = every cell builds its
actors (`tether sweep --cold`, the behaviour before), warm = one WarmRoles pool (the default). The arms alternate order
between rounds (cold first in odd rounds). Per cell: its wall time; its start (from the call to config.json, which the
driver writes once the actors are up and the engines hold the cell's weights); its loop (config.json to status.json:
iterations, evaluations, checkpoints), per iteration; and its end (the report, and closing the actors or handing them
back). Cells per hour at B iterations: 3600 / (start + loop / iterations x B + end).

Usage: python bench/warm_sweep.py [--config default] [--cells 3] [--iterations 2] [--rounds 1] [--budget 40] [--out FILE]
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
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.tables import table  # noqa: E402


def run_arm(spec: Path, folder: Path, *, warm: bool) -> list[dict]:
    """The spec's cells in ``folder``, cold or on one warm pool; per cell {wall, start, rest} seconds."""
    from services.experiments.sweep import load_sweep, write_sweep_files
    from services.experiments.sweep.run import run_cell
    from services.driver.warm import WarmRoles

    sw = load_sweep(spec, folder)
    write_sweep_files(sw)
    pool = WarmRoles() if warm else None
    out = []
    try:
        for c in sw.cells:
            t0 = time.time()
            status = run_cell(c.dir, progress=False, pool=pool)
            wall = time.time() - t0
            if status != "ran":
                raise RuntimeError(f"{c.id}: {status}")
            start = (c.dir / "config.json").stat().st_mtime - t0
            loop = (c.dir / "status.json").stat().st_mtime - t0 - start
            out.append({"wall": wall, "start": start, "loop": loop, "end": wall - start - loop, "iterations": c.config.train.iterations})
    finally:
        if pool is not None:
            pool.close()
    return out


def rows_for(name: str, cells: list[dict], budget: int) -> tuple:
    start, end = statistics.median(c["start"] for c in cells), statistics.median(c["end"] for c in cells)
    per_it = statistics.median(c["loop"] / c["iterations"] for c in cells)
    return (name, len(cells), f"{statistics.median(c['wall'] for c in cells):.1f}", f"{start:.1f}", f"{per_it:.2f}", f"{end:.1f}",
            f"{3600.0 / (start + per_it * budget + end):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="default", help="the cells' base config (a preset or YAML path)")
    ap.add_argument("--cells", type=int, default=3, help="cells per arm (seeds 0..N-1)")
    ap.add_argument("--iterations", type=int, default=2, help="iterations per cell")
    ap.add_argument("--rounds", type=int, default=1, help="rounds of both arms, their order alternating")
    ap.add_argument("--out", help="also write the table to this file")
    ap.add_argument("--budget", type=int, default=40, help="iterations per cell for the cells-per-hour column (the reproduction's: 40)")
    args = ap.parse_args()
    import yaml

    res: dict[str, list[dict]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory(prefix="tether-warm-bench-") as d:
        spec = Path(d) / "spec.yaml"
        base = args.config if not Path(args.config).is_file() else str(Path(args.config).resolve())
        spec.write_text(yaml.safe_dump({"name": "warm-bench", "base": base, "seeds": list(range(args.cells)),
                                        "set": {"train.iterations": args.iterations, "runs_dir": str(Path(d) / "runs")},
                                        "methods": {"ppo": {}}}, sort_keys=False))
        from tqdm import tqdm

        for r in tqdm(range(args.rounds), desc="rounds (cold, warm)", unit="round"):
            for arm in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
                res[arm].extend(run_arm(spec, Path(d) / f"{arm}-{r}", warm=arm == "warm"))
    per_arm = args.cells
    warm_first = [c for i, c in enumerate(res["warm"]) if i % per_arm == 0]
    warm_later = [c for i, c in enumerate(res["warm"]) if i % per_arm != 0]
    rows = [rows_for("cold (every cell starts its actors; tether sweep --cold)", res["cold"], args.budget),
            rows_for("warm: a sweep's first cell (starts the set)", warm_first, args.budget)]
    if warm_later:
        rows.append(rows_for("warm: later cells (default; rebound actors)", warm_later, args.budget))
    text = table(f"warm vs cold sweep cells: {args.config}, {args.iterations} iterations per cell, {args.cells} cells x {args.rounds} round(s) "
                "per arm, Ray + vLLM, fp32 (default precision), no compile; medians",
                 rows, ("arm", "cells", "s per cell", "start s", "s per iteration", "end s", f"cells/hour at {args.budget} iterations"))
    if warm_later:
        cold_start = statistics.median(c["start"] for c in res["cold"])
        warm_start = statistics.median(c["start"] for c in warm_later)
        text += (f"\n\nstart per cell: cold {cold_start:.1f} s, warm {warm_start:.1f} s ({cold_start / max(warm_start, 1e-9):.1f}x less); "
                 f"a sweep of {args.cells} cells saves {(args.cells - 1) * (cold_start - warm_start):.0f} s of starts")
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
