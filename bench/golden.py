"""Golden metrics: short seeded runs of every method, recorded before a refactor and compared after it.

    python bench/golden.py record OUT.json [--data DIR] [--no-ray]   # build the tiny task in DIR (once), run, write
    python bench/golden.py compare BEFORE.json AFTER.json            # a table of every metric that differs

The runs: the tiny task (configs/tiny.yaml, 1 torch thread), 2 iterations each of PPO + KL, PPO + Elastic
Reset (reset every iteration), f-DPG (RLHF target, JS), f-DPG (GDC target, lagged proposal), Quark,
Quark on the toxicity task and SALSA (soup reference), in-process with the transformers engine (the
computation is deterministic there: the comparison is bit for bit); PPO + KL through Ray actors + vLLM
(the default runtime; vLLM's CPU kernels are not bit-reproducible, so its metrics are compared with a
tolerance); and `tether bon` on a small budget (4 prompts x 8 samples, noisy ensemble only). Timings
(`time_s/*`, `perf/*`) are left out.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TETHER = str(Path(sys.executable).with_name("tether"))
COMMON = ["train.threads=1", "train.iterations=2", "runtime.checkpoint_every=0"]
LOCAL = ["runtime.mode=local", "runtime.engine=transformers"]
RUNS = {
    "ppo_kl": [*LOCAL],
    "elastic_reset": [*LOCAL, "elastic_reset.enabled=true", "elastic_reset.every=1"],
    "fdpg_rlhf": [*LOCAL, "algorithm=fdpg", "fdpg.batch_size=8", "fdpg.minibatch_size=4", "fdpg.lr=1e-3"],
    "fdpg_gdc": [*LOCAL, "algorithm=fdpg", "fdpg.target=gdc", "fdpg.proposal=lagged", "fdpg.lag_every=2", "fdpg.batch_size=8",
                 "fdpg.minibatch_size=4"],
    "quark": [*LOCAL, "algorithm=quark", "quark.batch_size=8", "quark.minibatch_size=4", "quark.steps_per_iteration=2"],
    "quark_toxicity": [*LOCAL, "algorithm=quark", "task.objective=toxicity", "quark.batch_size=8", "quark.minibatch_size=4",
                       "quark.steps_per_iteration=2"],
    "salsa": [*LOCAL, "reference.kind=soup", "reference.sft_tokens=20000"],
    "ppo_kl_ray_vllm": [],
}
RAY_TOL = 1e-3  # relative, for the vLLM run and best-of-n (sampling through vLLM)
SKIP = ("time_s/", "perf/")
VOLATILE = ("/time", "/timing/", "runs_dir", "data_dir", "/out")  # wall-clock stamps, durations and folders of one recording


def _run(args: list[str], env: dict) -> None:
    out = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")


def record(out: Path, data: Path, *, ray: bool) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    runs_dir = Path(tempfile.mkdtemp(prefix="golden-runs-"))
    base = ["--set", f"data_dir={data}", "--set", f"runs_dir={runs_dir}"]
    result: dict = {"runs": {}, "bon": None}
    for name, sets in RUNS.items():
        if name.endswith("_ray_vllm") and not ray:
            continue
        args = [*base, *[x for s in [*COMMON, *sets, f"name=g-{name.replace('_', '-')}"] for x in ("--set", s)]]
        _run([TETHER, "prepare", "tiny", *args], env)
        _run([TETHER, "train", "tiny", *args], env)
        (folder,) = runs_dir.glob(f"*-g-{name.replace('_', '-')}")
        rows = [json.loads(x) for x in (folder / "main" / "metrics.jsonl").read_text().splitlines()]
        result["runs"][name] = [{k: v for k, v in r.items() if not k.startswith(SKIP)} for r in rows]
        print(f"{name}: {len(rows)} rows", flush=True)
    if ray:
        bon_out = runs_dir / "bon"
        _run([TETHER, "bon", "tiny", *base, "--set", "train.threads=1", "--n-max", "8", "--prompts", "4", "--no-clean", "--out", str(bon_out)], env)
        bon = json.loads((bon_out / "bon.json").read_text())
        result["bon"] = {k: v for k, v in bon.items() if k not in ("settings", "time_s")}
        print("bon: recorded", flush=True)
    out.write_text(json.dumps(result, indent=1, sort_keys=True))


def _flat(x, prefix: str = "") -> dict:
    if isinstance(x, dict):
        return {k2: v2 for k, v in x.items() for k2, v2 in _flat(v, f"{prefix}{k}/").items()}
    if isinstance(x, list):
        return {k2: v2 for i, v in enumerate(x) for k2, v2 in _flat(v, f"{prefix}{i}/").items()}
    return {prefix.rstrip("/"): x}


def compare(a: Path, b: Path) -> int:
    fa, fb = _flat(json.loads(a.read_text())), _flat(json.loads(b.read_text()))
    rows, worst = [], {"exact": 0.0, "tolerance": 0.0}
    for k in sorted(set(fa) | set(fb)):
        if any(v in k if v.startswith("/") else v in k.split("/")[-1] for v in VOLATILE):
            continue
        va, vb = fa.get(k), fb.get(k)
        tolerant = "ray_vllm" in k or k.startswith("bon/")
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            if math.isnan(va) and math.isnan(vb):
                continue
            rel = abs(va - vb) / max(abs(va), abs(vb), 1e-12)
            kind = "tolerance" if tolerant else "exact"
            worst[kind] = max(worst[kind], rel)
            if (tolerant and rel > RAY_TOL) or (not tolerant and va != vb):
                rows.append((k, va, vb, rel))
        elif va != vb:
            rows.append((k, va, vb, float("nan")))
    print(f"{len(fa)} values before, {len(fb)} after; largest relative difference: in-process runs {worst['exact']:.2e} "
          f"(must be 0), vLLM/best-of-n {worst['tolerance']:.2e} (tolerance {RAY_TOL:g})")
    print(f"{'value':<60} {'before':>14} {'after':>14} {'rel':>9}")
    for k, va, vb, rel in rows[:200]:
        print(f"{k:<60} {va!s:>14.14} {vb!s:>14.14} {rel:>9.2e}")
    print(f"{len(rows)} value(s) differ beyond the stated tolerance")
    return 1 if rows else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record")
    r.add_argument("out")
    r.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "tether-golden-data"))
    r.add_argument("--no-ray", action="store_true", help="skip the Ray + vLLM run and best-of-n")
    c = sub.add_parser("compare")
    c.add_argument("before")
    c.add_argument("after")
    a = p.parse_args()
    if a.cmd == "record":
        record(Path(a.out), Path(a.data), ray=not a.no_ray)
        return 0
    return compare(Path(a.before), Path(a.after))


if __name__ == "__main__":
    sys.exit(main())
