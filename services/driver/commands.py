"""The bodies of `tether prepare`, `tether train` and `tether export` (services/cli.py parses their arguments): build the
task assets, run a config (or resume a run folder), write a checkpoint out as a Hugging Face folder."""
from __future__ import annotations

import sys
import time
from pathlib import Path


def load_or_exit(args):
    """The config named by `args.config` with `args.set` applied; a bad one ends the command with its message."""
    from learner.config import ConfigError, load_config

    try:
        return load_config(args.config, args.set)
    except ConfigError as e:
        sys.exit(f"tether: {e}")


def prepare_command(args) -> int:
    from learner.models.device import set_threads
    from tasks import get_task
    from tasks.store import AssetError

    cfg = load_or_exit(args)
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


def train_command(args) -> int:
    """Run a config (every variant in turn) into runs/<stamp>-<name>/<variant>/, or resume such a folder."""
    import yaml

    from actors.errors import RuntimeSetupError
    from learner.config import ConfigError, load_config
    from services.driver.report import write_comparison_report
    from services.driver.train import run_or_resume
    from tasks.store import AssetError

    if args.resume:
        root = Path(args.resume)
        if not (root / "tether.yaml").exists():
            sys.exit(f"tether: {root} is not a tether run folder (no tether.yaml); pass the folder `tether train` printed")
        try:
            cfg = load_config(root / "tether.yaml")
        except ConfigError as e:
            sys.exit(f"tether: {e}")
    else:
        cfg = load_or_exit(args)
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
    from services.driver.warm import WarmRoles

    pool = WarmRoles()  # the variants share warm actors where theirs would be the same (a fresh learner each)
    try:
        for rc in runs:
            sub = rc.name[len(cfg.name) + 1 :] if cfg.variants and rc.name.startswith(cfg.name + "-") else "main"
            d = root / sub
            dirs[rc.name] = d
            print(f"== {rc.name}: {d}")
            try:
                outcome, summary = run_or_resume(rc, d, cfg_source=args.config if not args.resume else str(root / "tether.yaml"),
                                                 control=control, pool=pool)
            except (AssetError, RuntimeSetupError) as e:
                sys.exit(f"tether: {e}")
            if outcome == "skipped":
                print(f"== {rc.name}: finished already, skipped")
            else:
                summaries[rc.name] = summary
    finally:
        pool.close()
    if len(dirs) > 1:
        page = write_comparison_report(dirs, root, f"tether comparison: {cfg.name}")
    else:
        page = next(iter(dirs.values())) / "report.html"
    for name, s in summaries.items():
        print(f"{name:>24}: gold {s.get('eval/gold_mean', float('nan')):+.3f}  proxy {s.get('eval/proxy_mean', float('nan')):+.3f}  "
              f"KL(init) {s.get('eval/kl_from_init_k3', float('nan')):.2f}  ppl(pi_0) {s.get('eval/ppl_under_init', float('nan')):.1f}")
    print(f"report: {page}")
    return 0


def export_command(args) -> int:
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
