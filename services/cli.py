"""The `tether` command line: prepare the task assets, train, and (later) serve / sweep / best-of-n."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _load(args):
    from learner.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as e:
        sys.exit(f"tether: {e}")


def cmd_prepare(args) -> int:
    from learner.assets.build import prepare, set_threads
    from learner.assets.store import AssetError

    cfg = _load(args)
    set_threads(cfg.train.threads)
    t0 = time.time()
    try:
        manifests = prepare(cfg, rebuild=args.rebuild, cfg_source=args.config)
    except AssetError as e:
        sys.exit(f"tether: {e}")
    print(f"task assets ready in {time.time() - t0:.0f}s under {Path(cfg.data_dir).resolve() / cfg.task.name}")
    for stage, m in manifests.items():
        metrics = m.get("metrics", {})
        if stage == "policy":
            print(f"  policy: {metrics.get('params', 0) / 1e6:.1f}M params, held-out perplexity {metrics.get('heldout_perplexity')}")
        elif stage == "gold":
            print(f"  gold:   held-out accuracy {metrics.get('heldout_accuracy')}, AUC {metrics.get('heldout_auc')}")
        elif stage == "proxy":
            accs = [mm["heldout_pair_acc_vs_gold"] for mm in metrics.get("members", [])]
            print(f"  proxy:  {len(accs)} members, held-out pair agreement with gold {', '.join(f'{a:.3f}' for a in accs)}")
    return 0


def cmd_train(args) -> int:
    from learner.assets.store import AssetError
    from services.train import train

    cfg = _load(args)
    runs = cfg.expand()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = {}
    for rc in runs:
        run_dir = Path(rc.runs_dir) / f"{stamp}-{rc.name}"
        print(f"== {rc.name}: {run_dir}")
        try:
            results[rc.name] = train(rc, run_dir, cfg_source=args.config)
        except AssetError as e:
            sys.exit(f"tether: {e}")
    print(json.dumps({k: {m: round(v, 4) for m, v in s.items() if m.startswith("eval/")} for k, s in results.items()}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tether", description="RL alignment with drift control: PPO+KL, Elastic Reset, reward ensembles, gold evaluation.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp):
        sp.add_argument("config", nargs="?", default="default", help="a preset name from configs/ (e.g. default, tiny) or a YAML file")
        sp.add_argument("--set", action="append", default=[], metavar="A.B=V", help="override a config field, e.g. --set train.iterations=5")

    sp = sub.add_parser("prepare", help="build (or reuse) the task assets: tokenizer, initial policy, gold scorer, proxy ensemble")
    common(sp)
    sp.add_argument("--rebuild", action="store_true", help="rebuild every stage even if cached (pretrains the policy from scratch)")
    sp.set_defaults(fn=cmd_prepare)

    sp = sub.add_parser("train", help="run the main job (every variant of a comparison preset in turn)")
    common(sp)
    sp.set_defaults(fn=cmd_train)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
