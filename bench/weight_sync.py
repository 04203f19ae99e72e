"""Weight sync into a vLLM engine at two model sizes, against a plain memcpy of the same bytes (issue: 3x memcpy).

Sizes: the default task's policy (4.5M parameters) and a 135M-parameter Llama (SmolLM-135M's shape: 30 layers, hidden
576, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings) with random weights written by ``save_pretrained`` in a
temporary folder. Each size runs in a process of its own, with vLLM's engine core in that process (what a Ray rollout
actor runs: runtime.vllm_engine_core auto = in_actor) and one torch thread (as the rollout actor).

One sync = the learner's send and the engine's reload, both finished. Rows:
  plain memcpy            load_state_dict of the same tensors into a transformers model: the floor, 1.00x
  before                  the previous default: a fresh safetensors file per version (save_file), vLLM's reload_weights
                          from that folder
  tmpfs + vLLM reload     the file rewritten in place (one copy per tensor), vLLM's reload_weights from views of it
  tmpfs + fast reload     the same file, actors/vllm_reload.py (the default on vLLM's CPU backend)
  object store / collective (4.5M only): the cross-node backends, unchanged by the fast path

Usage: python bench/weight_sync.py [--config default] [--repeats 5] [--sizes small,135m] [--out bench/weight_sync_results.md]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.tables import table  # noqa: E402

LLAMA_135M = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, max_position_embeddings=2048, tie_word_embeddings=True, bos_token_id=0, eos_token_id=0,
                  pad_token_id=0)


def write_135m(out: Path, tokenizer_from: Path) -> Path:
    """A SmolLM-135M-shaped Llama with seeded random weights (fp32) and the given tokenizer, via save_pretrained."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**LLAMA_135M)).save_pretrained(out)
    AutoTokenizer.from_pretrained(str(tokenizer_from)).save_pretrained(out)
    return out


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: first mappings, first packing
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def measure(path: Path, repeats: int, cross_node: bool) -> dict:
    """Seconds per sync of each path, in this process (its vLLM engine core in this process)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from actors.vllm_engine import VLLMEngine
    from actors.weight_sync import TmpfsWeightSync, make_weight_sync, prepare_tensors
    from learner.config import GenerationConfig

    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    eng = VLLMEngine(path, GenerationConfig(), kv_cache_gib=1, run_id=f"bench-sync-{os.getpid()}")
    res = {"params_m": sum(p.numel() for p in model.parameters()) / 1e6,
           "mib": sum(t.numel() * t.element_size() for t in prepare_tensors(sd.items()).values()) / 2**20}
    res["plain"] = timed(lambda: model.load_state_dict(sd), repeats)
    version = [0]
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None) as shm:
        def before():  # the previous default (git history: TmpfsWeightSync before the slots)
            version[0] += 1
            folder = Path(shm) / f"v{version[0]}"
            folder.mkdir()
            save_file(prepare_tensors(sd.items()), str(folder / "model.safetensors"), metadata={"format": "pt"})
            eng.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder), "is_checkpoint_format": True})
            eng.llm.reset_prefix_cache()
            if version[0] > 2:
                for old in Path(shm).glob(f"v{version[0] - 2}/*"):
                    old.unlink()

        res["before"] = timed(before, repeats)
    sync = TmpfsWeightSync(run_id=f"bench-sync-{os.getpid()}")
    split = {"send": [], "receive": []}

    def via(s, record=False):
        version[0] += 1
        t = time.perf_counter()
        handle = s.send(sd.items(), version[0])
        t1 = time.perf_counter()
        eng.receive_weights(s, handle)
        if record:
            split["send"].append(t1 - t)
            split["receive"].append(time.perf_counter() - t1)

    eng.fast_reload = False
    res["tmpfs_vllm"] = timed(lambda: via(sync), repeats)
    eng.fast_reload = True
    res["tmpfs_fast"] = timed(lambda: via(sync, record=True), repeats)
    assert eng.last_reload_path == "fast", eng.last_reload_path
    res["send"], res["receive"] = statistics.median(split["send"]), statistics.median(split["receive"])
    sync.close()
    if cross_node:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20, log_to_driver=False)
        store = make_weight_sync("object_store", run_id=f"bench-sync-{os.getpid()}")
        res["object_store"] = timed(lambda: via(store), repeats)
        store.close()
        ray.shutdown()
        from bench.run_all import bench_collective

        res["collective"] = bench_collective(eng, sd, lambda fn: timed(fn, repeats))
    eng.close()
    return res


ROWS = (("plain", "plain memcpy of the same bytes (load_state_dict)"),
        ("before", "before: a fresh safetensors file per version + vLLM reload_weights from the folder"),
        ("tmpfs_vllm", "tmpfs file rewritten in place + vLLM reload_weights from views"),
        ("tmpfs_fast", "tmpfs file rewritten in place + fast CPU reload (the default)"),
        ("object_store", "Ray object store + fast CPU reload (across nodes)"),
        ("collective", "collective: gloo broadcast, 64 MiB buckets, into vLLM's reload_weights (across nodes)"))


def rows(results: dict[str, dict]) -> list[tuple]:
    out = []
    for size, r in results.items():
        for key, label in ROWS:
            if key in r:
                extra = f"send {r['send'] * 1e3:.1f} + receive {r['receive'] * 1e3:.1f}" if key == "tmpfs_fast" else ""
                out.append((f"{size} ({r['params_m']:.1f}M params, {r['mib']:.0f} MiB fp32)", label, f"{r[key] * 1e3:.1f}",
                            f"{r[key] / r['plain']:.2f}x", extra))
    return out


HEADER = ("model", "path", "ms per sync", "vs memcpy", "split")


def main(argv=None) -> tuple[str, dict]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="default")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sizes", default="small,135m", help="comma-separated: small (the config's policy), 135m")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", nargs=2, metavar=("PATH", "CROSS_NODE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process, as in a Ray rollout actor
        print("RESULT " + json.dumps(measure(Path(args.one[0]), args.repeats, args.one[1] == "1")), flush=True)
        return "", {}
    from learner.config import load_config
    from tasks import get_task

    cfg = load_config(args.config).expand()[0]
    policy = Path(get_task(cfg).resolve(cfg_source=args.config).policy)
    results = {}
    with tempfile.TemporaryDirectory() as d:
        for size in args.sizes.split(","):
            path = policy if size == "small" else write_135m(Path(d) / "llama-135m", policy)
            out = subprocess.run([sys.executable, __file__, "--one", str(path), "1" if size == "small" else "0", "--repeats", str(args.repeats)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=1800)
            lines = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"weight-sync bench for {size} failed:\n{out.stderr[-3000:]}")
            results[size] = json.loads(lines[-1][len("RESULT "):])
    text = table(f"weight sync into vLLM, median of {args.repeats} (fp32, vLLM engine core in the process, 1 torch thread, "
                 f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M')})", rows(results), HEADER)
    print(text, flush=True)
    if args.out:
        Path(args.out).write_text(text.lstrip() + "\n")
    return text, results


if __name__ == "__main__":
    main()
