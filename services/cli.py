"""The `tether` command line: its arguments and which code each command runs. The commands' bodies sit beside what they
drive: prepare/train/export in services/driver/commands.py, bon/sweep/reproduce in services/experiments/commands.py,
serve in services/server/commands.py, reward-server in services/reward_server.py (each imported only when its command runs)."""
from __future__ import annotations

import argparse
import logging
import signal
import sys

from services.driver.commands import describe_stage  # noqa: F401 - `tether prepare`'s summary line, importable from here as before


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
    from services.driver.commands import prepare_command

    return prepare_command(args)


def cmd_train(args) -> int:
    """Run a config (every variant in turn) into runs/<stamp>-<name>/<variant>/, or resume such a folder."""
    from services.driver.commands import train_command

    exit_on_sigterm()  # the trainer's finally closes the roles, which removes their /dev/shm weight folders
    return train_command(args)


def cmd_serve(args) -> int:
    """Run the REST API (and the web page) until interrupted; an embedded Redis server unless --redis-url."""
    from services.server.commands import serve_command

    exit_on_sigterm()  # uvicorn re-raises SIGTERM under this handler once it has shut down: serve_command's finally runs
    return serve_command(args)


def cmd_bon(args) -> int:
    """Best-of-n gold and proxy curves vs KL from pi_0, per ensemble aggregation, noisy vs clean labels (Coste et al. 2023)."""
    from services.experiments.commands import bon_command

    return bon_command(args)


def cmd_sweep(args) -> int:
    """Run a sweep spec (methods x grids x seeds) cell by cell, locally or as Ray jobs; report it with scaling-law fits."""
    from services.experiments.commands import sweep_command

    return sweep_command(args)


def cmd_reproduce(args) -> int:
    """Every paper's claim on the default task: the reproduction's stages (resumable), then claims.md with CIs."""
    from services.experiments.commands import reproduce_command

    return reproduce_command(args)


def cmd_export(args) -> int:
    """A run's checkpoint as a Hugging Face folder (weights, tokenizer, generation config) that from_pretrained and vLLM load."""
    from services.driver.commands import export_command

    return export_command(args)


def cmd_reward_server(args) -> int:
    """A Python reward function behind HTTP (services/reward_server.py)."""
    from services.reward_server import reward_server_command

    return reward_server_command(args)


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
    sp.add_argument("--cold", action="store_true", help="start every cell's actors afresh (default: consecutive cells that need the same "
                    "actors share one set; each cell gets a fresh learner and its own weights, settings and seeds)")
    sp.set_defaults(fn=cmd_sweep)

    sp = sub.add_parser("reproduce", help="measure every paper's headline claim on the default task (3 seeds, bootstrap CIs): "
                                          "the reproduction's sweeps and best-of-n (resumable), then claims.md")
    sp.add_argument("--only", help="run only these stages, comma-separated (overopt, elastic_reset, ensembles, ensembles_clean, bon, quark, salsa, fdpg, "
                                   "critic_free); "
                                   "the report still covers every claim with the runs there are")
    sp.add_argument("--plan", action="store_true", help="print the stages, their cells and the minutes left, and exit")
    sp.add_argument("--seeds", type=int, default=None, metavar="N",
                    help="seeds 0..N-1 for every sweep stage instead of each spec's three (the cells of seeds 0-2 are the same cells)")
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
