"""The bodies of `tether bon`, `tether sweep` and `tether reproduce` (services/cli.py parses their arguments): check the
arguments, run the experiment, print its table and where its report is."""
from __future__ import annotations

import sys
import time
from pathlib import Path

from services.driver.commands import load_or_exit


def bon_command(args) -> int:
    """Best-of-n gold and proxy curves vs KL from pi_0, per ensemble aggregation, noisy vs clean labels (Coste et al. 2023)."""
    import shlex

    from actors.errors import RuntimeSetupError
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
    cfg = load_or_exit(args)
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


def sweep_command(args) -> int:
    """Run a sweep spec (methods x grids x seeds) cell by cell, locally or as Ray jobs; report it with scaling-law fits."""
    from tqdm.auto import tqdm

    from actors.errors import RuntimeSetupError
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
                               redis_url=args.redis_url, warm=not args.cold)
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


def reproduce_command(args) -> int:
    """Every paper's claim on the default task: the reproduction's stages (resumable), then claims.md with CIs."""
    from actors.errors import RuntimeSetupError
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
    seeds = None
    if args.seeds is not None:
        if not 1 <= args.seeds <= 100:
            sys.exit(f"tether: --seeds must be between 1 and 100 (seeds 0..N-1 for every sweep stage; the specs have 3), got {args.seeds}")
        seeds = list(range(args.seeds))
    from learner.config import load_config

    runs_dir = Path(load_config("default").runs_dir)
    out = Path(args.out) if args.out else runs_dir / "reproduce"
    try:
        if args.plan:
            print(plan_table(plan(runs_dir, seeds=seeds)))
            return 0
        if args.report_only:
            result = write_claims(out, runs_dir=runs_dir, n_boot=args.n_boot, only=only)
        else:
            print(plan_table(plan(runs_dir, seeds=seeds)))
            result = run_reproduction(out, only=only, n_boot=args.n_boot, say=tqdm.write, seeds=seeds)
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
