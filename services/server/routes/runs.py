"""Runs: create one (validated, stored, queued), list them, read one; the presets a run can start from."""
from __future__ import annotations

import uuid
from pathlib import Path

import yaml
from fastapi import APIRouter, HTTPException, Query

from learner.config import TetherConfig
from services.server.api_models import Preset, Run, RunCreate, RunsPage, RunSummary, errors, local_shadows, over_limits, resolve_data_refs
from services.server.deps import AUTH, RUN_ID, State, combined_status, invalid, relative_to
from services.server.scheduler import NeverFits
from services.state.jobs import run_resources

presets = APIRouter(tags=["runs"], dependencies=AUTH)  # GET /presets (included before the service's routes: the document's order)
router = APIRouter(tags=["runs"], dependencies=AUTH)


@presets.get("/presets", response_model=list[Preset])
def list_presets(st: State) -> list[dict]:
    """Named starting configs: POST /runs {"preset": name, "config": overrides}."""
    return st.presets.listing()


@router.post("/runs", response_model=Run, status_code=201,
             responses={201: {"description": "Stored and queued (status 'queued', with its queue_position) or admitted at once "
                                              "(its Ray job submitted)."},
                        **errors(503)})
def create_run(st: State, body: RunCreate):
    """Validate, store and queue a run; it is admitted in order when the cluster has room for what it declares."""
    settings, data_dir, scheduler = st.settings, st.data_dir, st.scheduler
    data = body.config.model_dump(exclude_unset=True)
    data["guard"] = body.config.guard.model_dump()  # the service's guard default (on) reaches the saved config whole
    cfg = TetherConfig.model_validate(data)
    if cfg.tracking.wandb.enabled and cfg.tracking.wandb.mode == "online" and not settings.wandb_online:
        return invalid([("config.tracking.wandb.mode", "online would send this run to W&B with the service's credentials; this "
                                                       "service allows offline and disabled (the operator enables online with tether serve --wandb-online)")])
    if cfg.tracking.mlflow.enabled and settings.mlflow_uri:
        cfg.tracking.mlflow.tracking_uri = settings.mlflow_uri
    shadowed = local_shadows(cfg, [Path.cwd(), data_dir])  # 'org/model' that names a folder on this server is a path, not a hub name
    if shadowed:
        return invalid(shadowed)
    bad_refs = resolve_data_refs(cfg, data_dir)  # data:<path>: the operator's models and prompts inside the data directory
    if bad_refs:
        return invalid(bad_refs)
    over = over_limits(cfg, settings.limits)
    if over:
        return invalid(over)
    need = run_resources(cfg)
    try:
        scheduler.check_fits(need)
    except NeverFits as e:
        return invalid([("config.runtime", str(e))])
    run_id = f"r-{uuid.uuid4().hex[:8]}"
    # Paths were checked to be relative and free of '..': resolve them inside the data directory.
    cfg.data_dir = str(data_dir / cfg.data_dir)
    cfg.runs_dir = str(data_dir / cfg.runs_dir / run_id)
    folder = data_dir / "service" / run_id
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / "tether.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    st.store.create_run(run_id, {"name": cfg.name, "config": cfg.dump(), "job_id": f"tether-{run_id}", "config_path": str(cfg_path),
                                 "state": "queued", "resources": need, "algorithm": cfg.algorithm})
    scheduler.enqueue(run_id)
    scheduler.tick(reconcile=False)  # admit now if there is room: the client learns a submission failure at once
    rec = st.get_record(run_id)
    if rec["state"] == "submit_failed":
        raise HTTPException(503, f"{rec.get('error')}; the run was stored (state submit_failed), not started")
    return st.view(rec)


@router.get("/runs", response_model=RunsPage)
def list_runs(st: State,
              offset: int = Query(0, ge=0, le=10**9, description="Skip this many (newest first)."),
              limit: int = Query(50, ge=1, le=500, description="At most this many runs."),
              state: str | None = Query(None, max_length=200, pattern=r"^[a-z_]+(,[a-z_]+)*$",
                                        description="Only runs in these states (comma-separated, e.g. running,paused)."),
              q: str | None = Query(None, max_length=200, description="Only runs whose id or name contains this (case-insensitive).")) -> RunsPage:
    """Run summaries, newest first, a page at a time (GET /runs/{id} has a run's config)."""
    positions = st.scheduler.positions()
    states = set(state.split(",")) if state else None
    rows = st.store.summaries(states=states, text=q)
    page = [RunSummary(**{**relative_to(r, st.data_dir), "name": r.get("name") or r["id"], "state": r.get("state") or "submitted",
                          "created": r.get("created") or r.get("updated") or 0.0, "updated": r.get("updated") or 0.0,
                          "status": combined_status(r.get("state") or "submitted", r.get("job_status")),
                          "queue_position": positions.get(r["id"]) if r.get("state") == "queued" else None})
            for r in rows[offset:offset + limit]]
    return RunsPage(total=len(rows), offset=offset, limit=limit, runs=page)


@router.get("/runs/{run_id}", response_model=Run, responses=errors(404))
def get_run(st: State, run_id: str = RUN_ID) -> Run:
    return st.view(st.get_record(run_id))
