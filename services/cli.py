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
    """Run a config (every variant in turn) into runs/<stamp>-<name>/<variant>/, or resume such a folder."""
    import yaml

    from actors.placement import RuntimeSetupError
    from learner.assets.store import AssetError
    from learner.config import ConfigError, TetherConfig, load_config
    from services.report import write_comparison_report, write_run_report
    from services.train import train

    if args.resume:
        root = Path(args.resume)
        if not (root / "tether.yaml").exists():
            sys.exit(f"tether: {root} is not a tether run folder (no tether.yaml); pass the folder `tether train` printed")
        try:
            cfg = load_config(root / "tether.yaml")
        except ConfigError as e:
            sys.exit(f"tether: {e}")
    else:
        cfg = _load(args)
        root = Path(cfg.runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "tether.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    runs = cfg.expand()
    dirs: dict[str, Path] = {}
    summaries = {}
    print(f"run folder: {root}")
    for rc in runs:
        sub = rc.name[len(cfg.name) + 1 :] if cfg.variants and rc.name.startswith(cfg.name + "-") else "main"
        d = root / sub
        dirs[rc.name] = d
        status = d / "status.json"
        if args.resume and status.exists() and json.loads(status.read_text()).get("state") == "finished":
            print(f"== {rc.name}: finished already, skipped")
            continue
        print(f"== {rc.name}: {d}")
        try:
            summaries[rc.name] = train(rc, d, cfg_source=args.config if not args.resume else str(root / "tether.yaml"), resume=bool(args.resume))
        except (AssetError, RuntimeSetupError) as e:
            sys.exit(f"tether: {e}")
        write_run_report(d, rc.name)
    if len(dirs) > 1:
        page = write_comparison_report(dirs, root, f"tether comparison: {cfg.name}")
    else:
        page = next(iter(dirs.values())) / "report.html"
    for name, s in summaries.items():
        print(f"{name:>24}: gold {s.get('eval/gold_mean', float('nan')):+.3f}  proxy {s.get('eval/proxy_mean', float('nan')):+.3f}  "
              f"KL(init) {s.get('eval/kl_from_init_k3', float('nan')):.2f}  ppl(pi_0) {s.get('eval/ppl_under_init', float('nan')):.1f}")
    print(f"report: {page}")
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
    sp.add_argument("--resume", metavar="RUN", help="continue the run folder RUN from its latest checkpoints (finished variants are skipped)")
    sp.set_defaults(fn=cmd_train)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
