"""The `tether` command line: prepare the task assets, train, and (later) serve / sweep / best-of-n."""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path


def _load(args):
    from learner.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as e:
        sys.exit(f"tether: {e}")


def exit_on_sigterm() -> None:
    """Turn SIGTERM (`kill`, `ray job stop`, docker stop) into SystemExit, as Ctrl+C is a KeyboardInterrupt:
    with Python's default disposition the process dies at once, and no `finally` runs (tmpfs weight
    folders, the embedded Redis server stay behind)."""

    def handler(signum: int, frame) -> None:
        # In a process that called ray.init, Ray's C++ failure-signal handler saw this SIGTERM first and armed
        # a 3 s alarm that aborts the process (SIGABRT) mid clean-up; closing the vLLM engines takes longer.
        signal.alarm(0)
        logging.getLogger(__name__).info("%s received: cleaning up and exiting", signal.Signals(signum).name)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def cmd_prepare(args) -> int:
    from tasks import get_task, set_threads
    from tasks.store import AssetError

    cfg = _load(args)
    set_threads(cfg.train.threads)
    t0 = time.time()
    manifests: dict = {}
    try:
        built: set[str] = set()
        for vc in cfg.expand():  # every variant's assets (a SALSA variant needs the SFT stage); shared stages are built once
            for stage, m in get_task(vc).prepare(rebuild=args.rebuild and not built, cfg_source=args.config).items():
                manifests.setdefault(stage, m)
            built.add(vc.name)
    except AssetError as e:
        sys.exit(f"tether: {e}")
    except RuntimeError as e:  # a scorer that cannot be built or answered badly (learner.models.scorers.ScorerError)
        from learner.models.scorers import ScorerError

        if not isinstance(e, ScorerError):
            raise
        sys.exit(f"tether: {e}")
    print(f"task assets ready in {time.time() - t0:.0f}s under {Path(cfg.data_dir).resolve() / cfg.task.name}")
    for stage, m in manifests.items():
        line = describe_stage(stage, m)
        if line:
            print(f"  {line}")
    return 0


def describe_stage(stage: str, m: dict) -> str | None:
    """One line of `tether prepare`'s summary for a stage's manifest."""
    metrics = m.get("metrics", {})
    if stage == "policy" and "params" in metrics:
        return f"policy: {metrics.get('params', 0) / 1e6:.1f}M params, held-out perplexity {metrics.get('heldout_perplexity')}"
    if stage in ("policy", "gold") and "source" in m:
        return f"{stage + ':':7} {m['source']} ({m.get('note', '')})"
    if stage == "gold" and "heldout_sentiment_auc_50_words" in metrics:  # the contextual judge
        return (f"gold:   sentiment AUC {metrics['heldout_sentiment_auc_50_words']} on 50-word held-out windows; "
                f"{metrics['natural_fraction_penalised']:.1%} of them penalised (coherence, repetition, diversity)")
    if stage == "gold":
        return f"gold:   held-out accuracy {metrics.get('heldout_accuracy')}, AUC {metrics.get('heldout_auc')}"
    if stage == "prompts":
        return (f"prompts: {metrics.get('train_prompts')} train, {metrics.get('heldout_prompts')} held-out ({metrics.get('heldout')}); "
                f"{metrics.get('dropped_too_long', 0)} of {metrics.get('rows')} rows dropped as too long, {metrics.get('dropped_empty', 0)} empty")
    if stage == "proxy":
        accs = [mm.get("heldout_pair_acc_vs_gold", mm.get("heldout_pair_acc_vs_labels")) for mm in metrics.get("members", [])]
        what = "the preference labels" if metrics.get("source") == "preferences" else "gold"
        return f"proxy:  {len(accs)} members, held-out pair agreement with {what} {', '.join(f'{a:.3f}' for a in accs)}"
    if stage == "sft":
        ppl = ", ".join(str(mm.get("heldout_perplexity")) for mm in metrics.get("members", []))
        return f"sft:    {len(metrics.get('members', []))} models, held-out perplexity {ppl}; soup {metrics.get('soup_heldout_perplexity')}"
    return None


def cmd_train(args) -> int:
    """Run a config (every variant in turn) into runs/<stamp>-<name>/<variant>/, or resume such a folder."""
    import yaml

    from actors.placement import RuntimeSetupError
    from learner.config import ConfigError, load_config
    from services.driver.report import write_comparison_report
    from services.driver.train import run_or_resume
    from tasks.store import AssetError

    exit_on_sigterm()  # the trainer's finally closes the roles, which removes their /dev/shm weight folders
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
        from services.driver.control import RunControl
        from services.state.redis_store import default_redis_url

        url = args.redis_url or default_redis_url()
        if not url:
            sys.exit("tether: --run-id needs --redis-url (or env TETHER_REDIS_URL): the Redis server of `tether serve`")
        control = RunControl(url, args.run_id)
        control.register(name=cfg.name, config=cfg.dump())
    dirs: dict[str, Path] = {}
    summaries = {}
    print(f"run folder: {root}")
    for rc in runs:
        sub = rc.name[len(cfg.name) + 1 :] if cfg.variants and rc.name.startswith(cfg.name + "-") else "main"
        d = root / sub
        dirs[rc.name] = d
        print(f"== {rc.name}: {d}")
        try:
            outcome, summary = run_or_resume(rc, d, cfg_source=args.config if not args.resume else str(root / "tether.yaml"), control=control)
        except (AssetError, RuntimeSetupError) as e:
            sys.exit(f"tether: {e}")
        if outcome == "skipped":
            print(f"== {rc.name}: finished already, skipped")
        else:
            summaries[rc.name] = summary
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

    from services.server import serving
    from services.server.api import ServiceSettings, create_app, load_or_create_token
    from services.state.embedded_redis import EmbeddedRedis, RedisStartError
    from services.state.jobs import RayJobs

    # uvicorn handles SIGTERM/SIGINT itself (services/server/serving.py: ending the open metric streams first), shuts down, then
    # re-raises the signal under the handler found before it started: ours, so the finally below stops the embedded server.
    # A SIGKILLed server takes the embedded server with it (its parent-death signal, services/state/embedded_redis.py).
    exit_on_sigterm()
    from services.server.api_models import parse_limits

    try:
        limits = parse_limits(args.limit)
    except ValueError as e:
        sys.exit(f"tether: {e}")
    if args.job_retries < 0:
        sys.exit(f"tether: --job-retries must be >= 0 (0: a run whose driver died stays failed), got {args.job_retries}")
    if args.max_runs is not None and args.max_runs < 1:
        sys.exit(f"tether: --max-runs must be >= 1 (or left out: as many runs as the cluster's CPUs/GPUs hold), got {args.max_runs}")
    if not 0 < args.max_body_mb <= 1024:
        sys.exit(f"tether: --max-body-mb must be in (0, 1024], got {args.max_body_mb}")
    if args.redis_restarts < 0:
        sys.exit(f"tether: --redis-restarts must be >= 0 (0: an embedded Redis that dies stays down), got {args.redis_restarts}")
    import re

    origins = []
    for o in args.cors_origin:  # an origin is scheme://host[:port], exactly as a browser sends it; '*' would allow every page
        if not re.fullmatch(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?", o):
            sys.exit(f"tether: --cors-origin takes an origin like https://console.lab.example or http://localhost:3000 (scheme, host, "
                     f"optional port; no path, no '*'), got {o!r}")
        origins.append(o)
    presets_dir = None
    if args.presets:
        from services.server.presets import Presets

        presets_dir = Path(args.presets).resolve()
        try:
            Presets(presets_dir)
        except (ValueError, OSError) as e:
            sys.exit(f"tether: --presets: {e}")
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    embedded = None
    url = args.redis_url or os.environ.get("TETHER_REDIS_URL")
    if not url:
        embedded = EmbeddedRedis(data_dir, restarts=args.redis_restarts)
        try:
            url = embedded.start()
        except (OSError, RedisStartError) as e:
            sys.exit(f"tether: the embedded Redis server did not start: {e}")
    token, source = load_or_create_token(data_dir)
    jobs = None if args.no_ray else RayJobs(args.ray_address, auth=args.ray_auth)
    app = create_app(ServiceSettings(data_dir=data_dir, redis_url=url, token=token, jobs=jobs, max_runs=args.max_runs, job_retries=args.job_retries, limits=limits,
                                     max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                                     redis_problem=None if embedded is None else (lambda: embedded.problem),
                                     presets_dir=presets_dir, cors_origins=origins, mlflow_uri=args.mlflow_uri, wandb_online=args.wandb_online))
    print(f"tether serve: http://{args.host}:{args.port}/  (API docs /docs)")
    where = "external" if embedded is None else f"embedded, data in {embedded.dir}" + (
        f", restarted up to {args.redis_restarts} times a minute" if embedded.owned else ", started by another tether serve: not supervised")
    print(f"  redis: {url} ({where})")
    print(f"  ray jobs: {'disabled' if jobs is None else args.ray_address + ' (auth ' + args.ray_auth + ')'}")
    print(f"  API token: {source}")
    print(f"  admission: {'at most ' + str(args.max_runs) + ' runs at once, and ' if args.max_runs else ''}what the cluster's CPUs/GPUs hold; "
          f"request bodies up to {args.max_body_mb:g} MB")
    try:
        serving.run(app, host=args.host, port=args.port, log_level="info")
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def cmd_bon(args) -> int:
    """Best-of-n gold and proxy curves vs KL from pi_0, per ensemble aggregation, noisy vs clean labels (Coste et al. 2023)."""
    import shlex

    from actors.placement import RuntimeSetupError
    from learner.config import ConfigError, load_config
    from services.experiments.bon import fit_rows, run_bon
    from services.experiments.bon import fmt_num as f
    from tasks import get_task
    from tasks.store import AssetError

    if args.n_max < 1:
        sys.exit(f"tether: --n-max must be >= 1 (samples per prompt; best-of-n for every n up to it), got {args.n_max}")
    if args.prompts < 1:
        sys.exit(f"tether: --prompts must be >= 1 (held-out prompts), got {args.prompts}")
    if args.n_best is not None and not 1 <= args.n_best <= args.n_max:
        sys.exit(f"tether: --n-best must be between 1 and --n-max ({args.n_max}, the samples per prompt), got {args.n_best}")
    if args.uwo_lambda < 0:
        sys.exit(f"tether: --uwo-lambda must be >= 0 (UWO = mean - lambda * variance), got {args.uwo_lambda}")
    cfg = _load(args)
    src = lambda sets: shlex.join([args.config, *[x for s in sets for x in ("--set", s)]])  # noqa: E731 - the prepare command to print
    try:
        paths = get_task(cfg).resolve(cfg_source=src(args.set))
    except AssetError as e:
        sys.exit(f"tether: {e}")
    if any(p == paths.gold for p in paths.proxies):
        sys.exit("tether: bon compares proxies against a held-out gold, and this config's gold is one of its proxies (e.g. "
                 "task.objective toxicity, where alt-profanity-check is both); choose proxies other than the gold")
    clean_cfg = clean_src = None
    if args.no_clean:
        pass
    elif cfg.proxy.source != "synthetic":
        print(f"proxy.source is {cfg.proxy.source}: label noise applies to synthetic proxies only; no clean-label ensemble")
    elif cfg.proxy.label_noise == 0:
        print("proxy.label_noise is 0 already: the proxies are the clean ones; no second ensemble")
    else:
        clean_sets = [*args.set, "proxy.label_noise=0"]
        try:
            clean_cfg = load_config(args.config, clean_sets)
            get_task(clean_cfg).resolve(cfg_source=src(clean_sets))
        except ConfigError as e:
            sys.exit(f"tether: {e}")
        except AssetError as e:
            sys.exit(f"tether: the clean-label proxy ensemble (proxy.label_noise=0) is not ready: {e}\n"
                     f"  or pass --no-clean to run only the noisy ensemble (label_noise {cfg.proxy.label_noise})")
        clean_src = src(clean_sets)
    out = Path(args.out) if args.out else Path(cfg.runs_dir) / f"{time.strftime('%Y%m%d-%H%M%S')}-bon-{cfg.name}"
    print(f"best-of-n: {args.prompts} prompts x {args.n_max} samples -> {out}")
    try:
        result = run_bon(cfg, out, n_max=args.n_max, n_prompts=args.prompts, n_best=args.n_best, clean_cfg=clean_cfg, uwo_lambda=args.uwo_lambda,
                         cfg_source=src(args.set), clean_cfg_source=clean_src)
    except (AssetError, RuntimeSetupError, ValueError) as e:
        sys.exit(f"tether: {e}")
    print(f"{'curve':>12} {'gold@1':>8} {'gold@N':>8} {'best n':>6} {'alpha':>8} {'beta':>8} {'R^2':>6} {'peak KL':>8}")
    for r in fit_rows(result):
        print(f"{r['curve']:>12} {f(r['gold/n1']):>8} {f(r['gold/n_max']):>8} {r['best_n']:>6} {f(r['fit/alpha']):>8} "
              f"{f(r['fit/beta']):>8} {f(r['fit/r2'], '.2f'):>6} {f(r['fit/peak_kl'], '.2f'):>8}")
    print(f"report: {out / 'report.html'}")
    return 0


def cmd_sweep(args) -> int:
    """Run a sweep spec (methods x grids x seeds) cell by cell, locally or as Ray jobs; report it with scaling-law fits."""
    from tqdm.auto import tqdm

    from actors.placement import RuntimeSetupError
    from learner.config import ConfigError
    from services.experiments.sweep import (
        format_table,
        load_sweep,
        run_sweep,
        summarise,
        write_sweep_report,
    )
    from tasks.store import AssetError

    try:
        sweep = load_sweep(args.spec, args.dir)
    except ConfigError as e:
        sys.exit(f"tether: {e}")
    print(f"sweep folder: {sweep.dir}  ({len(sweep.cells)} cells)")
    failed: list[str] = []
    if args.report_only:
        if not (sweep.dir / "cells.json").exists():
            sys.exit(f"tether: {sweep.dir} has no cells.json: run `tether sweep {args.spec}` (without --report-only) first")
        page, summary = write_sweep_report(sweep.dir), summarise(sweep.dir)
    else:
        try:
            result = run_sweep(args.spec, args.dir, submit=args.submit, ray_auth=args.ray_auth, max_parallel=args.max_parallel, notify=tqdm.write,
                               redis_url=args.redis_url)
        except (ConfigError, AssetError, RuntimeSetupError) as e:
            sys.exit(f"tether: {e}")
        except RuntimeError as e:  # Ray job submission (unreachable dashboard, missing auth token)
            if not args.submit:
                raise
            sys.exit(f"tether: {e}")
        page, summary = result.report, result.summary
        failed = [cid for cid, st in result.statuses.items() if st == "failed"]
    print(format_table(summary))
    print(f"report: {page}")
    if failed:
        print(f"tether: {len(failed)} cell(s) failed (see the log above; run the same command again to retry): {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def cmd_reproduce(args) -> int:
    """Every paper's claim on the default task: the reproduction's stages (resumable), then claims.md with CIs."""
    from actors.placement import RuntimeSetupError
    from learner.config import ConfigError
    from services.experiments.reproduce import STAGE_NAMES, claims_table, plan, plan_table, run_reproduction, write_claims
    from tasks.store import AssetError
    from tqdm.auto import tqdm

    only = None
    if args.only:
        only = [x.strip() for x in args.only.split(",") if x.strip()]
        bad = [x for x in only if x not in STAGE_NAMES]
        if bad or not only:
            sys.exit(f"tether: --only takes stage names separated by commas; unknown: {', '.join(bad) or '(none given)'}; "
                     f"stages: {', '.join(STAGE_NAMES)}")
    if not 100 <= args.n_boot <= 100_000:
        # each resample re-measures every claim (about 0.2 ms a claim here): 100000 resamples of 41 claims take about 15 minutes
        sys.exit(f"tether: --n-boot must be between 100 and 100000 (bootstrap resamples for the 95% intervals; the committed "
                 f"results use the default, 2000), got {args.n_boot}")
    from learner.config import load_config

    runs_dir = Path(load_config("default").runs_dir)
    out = Path(args.out) if args.out else runs_dir / "reproduce"
    try:
        if args.plan:
            print(plan_table(plan(runs_dir)))
            return 0
        if args.report_only:
            result = write_claims(out, runs_dir=runs_dir, n_boot=args.n_boot)
        else:
            print(plan_table(plan(runs_dir)))
            result = run_reproduction(out, only=only, n_boot=args.n_boot, say=tqdm.write)
    except (ConfigError, AssetError, RuntimeSetupError) as e:
        sys.exit(f"tether: {e}")
    print(claims_table(result["rows"]))
    for d, why in (result.get("unreadable_runs") or {}).items():
        print(f"tether: left out of the claims, could not be read: {d} ({why})", file=sys.stderr)
    print(f"claims: {out / 'claims.md'}")
    if args.readme:
        from services.experiments.reproduce import update_readme

        if not update_readme(Path(args.readme), result["rows"]):
            sys.exit(f"tether: {args.readme} has no '<!-- claims:start -->' ... '<!-- claims:end -->' markers; the table was not written there")
        print(f"table written into {args.readme}")
    return 0


def cmd_export(args) -> int:
    """A run's checkpoint as a Hugging Face folder (weights, tokenizer, generation config) that from_pretrained and vLLM load."""
    import json

    from learner.models.export import export_policy

    run = Path(args.run)
    src = run / "policy_source.json"
    if not src.is_file():
        sys.exit(f"tether: {run} is not a run folder of this version of tether (no policy_source.json; `tether train` writes one)")
    ckpts = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / "learner.pt").is_file()) if (run / "checkpoints").is_dir() else []
    if not ckpts:
        sys.exit(f"tether: {run} has no checkpoint (checkpoints/step-N/learner.pt)")
    if args.step is None:
        ck = ckpts[-1]
    else:
        ck = run / "checkpoints" / f"step-{args.step:06d}"
        if ck not in ckpts:
            sys.exit(f"tether: {run} has no checkpoint of step {args.step}; its checkpoints: "
                     f"{', '.join(str(int(p.name.split('-')[1])) for p in ckpts)} (runtime.keep_checkpoints keeps the newest)")
    out = Path(args.out) if args.out else run / f"policy-step-{int(ck.name.split('-')[1])}"
    start = json.loads(src.read_text())["policy"]
    try:
        path = export_policy(start, ck / "learner.pt", out, note={"run": str(run)})
    except (OSError, ValueError) as e:
        sys.exit(f"tether: cannot export {ck}: {e}")
    print(f"exported {ck} to {path} (AutoModelForCausalLM.from_pretrained('{path}') or vLLM's LLM(model='{path}'))")
    return 0


def cmd_reward_server(args) -> int:
    """A Python reward function behind HTTP (services/reward_server.py)."""
    import os

    from services.reward_server import load_function, serve

    token = None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            sys.exit(f"tether: --token-env {args.token_env}: the variable is not set")
    try:
        load_function(args.function)
    except (ImportError, ValueError) as e:
        sys.exit(f"tether: {e}")
    print(f"reward server: {args.function} on http://{args.host}:{args.port}/get_reward", flush=True)
    serve(args.function, host=args.host, port=args.port, token=token)
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
    sp.add_argument("--no-ray", action="store_true", help="no job submission: runs are stored and wait queued (a replica with Ray on the same Redis admits them); runs can still be watched and steered")
    sp.add_argument("--job-retries", type=int, default=1,
                    help="resume a run whose driver died (killed, OOM, lost node) from its checkpoint, at most this many times (default 1)")
    sp.add_argument("--max-runs", type=int, default=None,
                    help="at most this many runs at once (default: as many as the cluster's CPUs/GPUs hold for what each run declares); "
                         "the others wait as 'queued', in order")
    sp.add_argument("--limit", action="append", default=[], metavar="FIELD=MAX",
                    help="largest value a submitted config may ask for, e.g. --limit train.iterations=10000 (defaults: services/server/models/config.py)")
    sp.add_argument("--max-body-mb", type=float, default=1.0, help="largest request body accepted, in MB (default 1; 413 above)")
    sp.add_argument("--presets", metavar="DIR", help="a folder of YAML configs offered as presets (GET /presets) beside the built-in ones")
    sp.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                    help="a browser origin allowed to call the API from another page (repeatable; default none: only this server's own page)")
    sp.add_argument("--mlflow-uri", help="the MLflow tracking server of runs with tracking.mlflow.enabled (default: a local store in each run's folder)")
    sp.add_argument("--wandb-online", action="store_true", help="let runs use tracking.wandb.mode online (with this service's W&B credentials)")
    sp.add_argument("--redis-restarts", type=int, default=5,
                    help="restart the embedded Redis server when it dies, at most this many times a minute (backoff from 0.5 s, "
                         "doubling); then every endpoint answers 503 saying so (default 5; 0: never)")
    sp.set_defaults(fn=cmd_serve)

    sp = sub.add_parser("bon", help="best-of-n gold and proxy curves vs KL from the initial policy, per ensemble aggregation, noisy vs clean labels")
    common(sp)
    sp.add_argument("--n-max", type=int, default=64, help="samples per prompt N; best-of-n is estimated for n up to N (default 64)")
    sp.add_argument("--n-best", type=int, default=None, help="largest n estimated (default: --n-max); e.g. --n-max 512 --n-best 256")
    sp.add_argument("--prompts", type=int, default=64, help="held-out prompts (default 64)")
    sp.add_argument("--no-clean", action="store_true", help="skip the second ensemble trained on clean labels (proxy.label_noise=0)")
    sp.add_argument("--uwo-lambda", type=float, default=0.5, help="UWO lambda (Coste et al.: 0.5 for best-of-n; default 0.5)")
    sp.add_argument("--out", help="output folder (default <runs_dir>/<stamp>-bon-<name>)")
    sp.set_defaults(fn=cmd_bon)

    sp = sub.add_parser("sweep", help="methods x coefficient grids x seeds from a sweep spec (configs/sweeps/imdb.yaml), resumable; report with scaling-law fits")
    sp.add_argument("spec", help="a sweep spec YAML (format: services/experiments/sweep/__init__.py)")
    sp.add_argument("--dir", help="sweep folder (default <runs_dir>/sweep-<name>; the same folder resumes: finished cells are skipped)")
    sp.add_argument("--submit", metavar="DASHBOARD_ADDR", help="run each unfinished cell as a Ray job on this dashboard (e.g. http://127.0.0.1:8265) and wait")
    sp.add_argument("--ray-auth", choices=["token", "disabled"], default=os.environ.get("TETHER_RAY_AUTH", "token"),
                    help="with --submit: the cluster's Ray auth mode (as for `tether serve`)")
    sp.add_argument("--max-parallel", type=int, default=None, help="with --submit: at most this many cell jobs at once (default: as many as the cluster's CPUs/GPUs hold for what a cell declares)")
    sp.add_argument("--redis-url", default=os.environ.get("TETHER_REDIS_URL"),
                    help="with --submit: also make each cell a run of the `tether serve` on this Redis (metrics, page, commands); "
                         "default env TETHER_REDIS_URL")
    sp.add_argument("--report-only", action="store_true", help="only (re)write the report of the sweep folder")
    sp.set_defaults(fn=cmd_sweep)

    sp = sub.add_parser("reproduce", help="measure every paper's headline claim on the default task (3 seeds, bootstrap CIs): "
                                          "the reproduction's sweeps and best-of-n (resumable), then claims.md")
    sp.add_argument("--only", help="run only these stages, comma-separated (overopt, elastic_reset, ensembles, ensembles_clean, bon, quark, salsa, fdpg); "
                                   "the report still covers every claim with the runs there are")
    sp.add_argument("--plan", action="store_true", help="print the stages, their cells and the minutes left, and exit")
    sp.add_argument("--report-only", action="store_true", help="only (re)measure the claims from the runs there are")
    sp.add_argument("--out", help="folder for claims.md, claims.json and plots (default <runs_dir>/reproduce; the committed ones: docs/results)")
    sp.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples per claim (default 2000)")
    sp.add_argument("--readme", help="also write the table of measured claims between the claims markers of this file (make reproduce: README.md)")
    sp.set_defaults(fn=cmd_reproduce)

    sp = sub.add_parser("export", help="a run's checkpoint as a Hugging Face folder that from_pretrained and vLLM load")
    sp.add_argument("run", help="a run folder (runs/<stamp>-<name>/<variant>)")
    sp.add_argument("--step", type=int, help="the checkpoint's iteration (default: the latest)")
    sp.add_argument("--out", help="the folder to write (default RUN/policy-step-N)")
    sp.set_defaults(fn=cmd_export)

    sp = sub.add_parser("reward-server", help="serve a Python reward function over HTTP (tether's http scorers and OpenRLHF's remote reward protocol)")
    sp.add_argument("function", help="package.module:function(prompts, responses, **metadata) -> list[float]")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--port", type=int, default=5000)
    sp.add_argument("--token-env", help="require Authorization: Bearer <the value of this environment variable>")
    sp.set_defaults(fn=cmd_reward_server)

    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "filelock", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
