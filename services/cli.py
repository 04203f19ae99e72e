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
    from learner.config import ConfigError, load_config
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
        (root / "tether.yaml").write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    runs = cfg.expand()
    control = None
    if args.run_id:
        if len(runs) > 1:
            sys.exit("tether: --run-id reports one run; this config has variants: submit each variant as its own run")
        from services.control import RunControl
        from services.redis_store import default_redis_url

        url = args.redis_url or default_redis_url()
        if not url:
            sys.exit("tether: --run-id needs --redis-url (or env TETHER_REDIS_URL): the Redis server of `tether serve`")
        control = RunControl(url, args.run_id)
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
            summaries[rc.name] = train(rc, d, cfg_source=args.config if not args.resume else str(root / "tether.yaml"), resume=bool(args.resume),
                                       control=control)
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


def cmd_serve(args) -> int:
    """Run the REST API (and the web page) until interrupted; an embedded Redis server unless --redis-url."""
    import os

    import uvicorn

    from services.api import ServiceSettings, create_app, load_or_create_token
    from services.jobs import RayJobs
    from services.redis_store import EmbeddedRedis

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    url = args.redis_url or os.environ.get("TETHER_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(data_dir)
        url = embedded.start()
    token, source = load_or_create_token(data_dir)
    jobs = None if args.no_ray else RayJobs(args.ray_address, auth=args.ray_auth)
    app = create_app(ServiceSettings(data_dir=data_dir, redis_url=url, token=token, jobs=jobs))
    print(f"tether serve: http://{args.host}:{args.port}/  (API docs /docs)")
    print(f"  redis: {url} ({'embedded, data in ' + str(embedded.dir) if embedded else 'external'})")
    print(f"  ray jobs: {'disabled' if jobs is None else args.ray_address + ' (auth ' + args.ray_auth + ')'}")
    print(f"  API token: {source}")
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if embedded is not None:
            embedded.stop()
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
    sp.add_argument("--run-id", help="report metrics to and take commands from the `tether serve` run RUN_ID (needs --redis-url)")
    sp.add_argument("--redis-url", help="Redis of `tether serve`, e.g. redis://127.0.0.1:16379/0 (default: env TETHER_REDIS_URL)")
    sp.set_defaults(fn=cmd_train)

    import os

    sp = sub.add_parser("serve", help="the REST API and web page: create runs as Ray jobs, watch metrics, pause/resume/stop/reset, change parameters")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    sp.add_argument("--data-dir", default=os.environ.get("TETHER_HOME", "runs/service"),
                    help="everything the service writes: run configs and folders, the embedded Redis, the API token (default env TETHER_HOME or runs/service)")
    sp.add_argument("--redis-url", help="an external Redis (default env TETHER_REDIS_URL; neither = an embedded valkey server under the data dir)")
    sp.add_argument("--ray-address", default=os.environ.get("TETHER_RAY_DASHBOARD", "http://127.0.0.1:8265"),
                    help="Ray dashboard address for job submission (default env TETHER_RAY_DASHBOARD or http://127.0.0.1:8265)")
    sp.add_argument("--ray-auth", choices=["token", "disabled"], default=os.environ.get("TETHER_RAY_AUTH", "token"),
                    help="Ray 2.60 auth mode of that cluster: token (sent from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token) or disabled")
    sp.add_argument("--no-ray", action="store_true", help="no job submission (runs can still be watched and steered)")
    sp.set_defaults(fn=cmd_serve)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
