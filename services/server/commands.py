"""The body of `tether serve` (services/cli.py parses its options, imports this module and turns SIGTERM into SystemExit
before calling it): check the options, start the embedded Redis server unless --redis-url, run the app until interrupted."""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from services.server import serving
from services.server.api import ServiceSettings, create_app, load_or_create_token
from services.server.api_models import parse_limits
from services.state.embedded_redis import EmbeddedRedis, RedisStartError
from services.state.jobs import RayJobs


def serve_command(args) -> int:
    """Run the REST API (and the web page) until interrupted; an embedded Redis server unless --redis-url."""
    # uvicorn handles SIGTERM/SIGINT itself (services/server/serving.py: ending the open metric streams first), shuts down, then
    # re-raises the signal under the handler found before it started: services/cli.py's exit_on_sigterm, so the finally below
    # stops the embedded server. A SIGKILLed server takes the embedded server with it (its parent-death signal,
    # services/state/embedded_redis.py).
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
