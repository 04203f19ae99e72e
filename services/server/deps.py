"""The state every route shares (the Redis store, the scheduler, the presets, the settings) and the helpers over it,
handed to the routes (services/server/routes/) as the FastAPI dependency ``State``.

``AppState.create`` builds it once per app (services/server/api.create_app puts it on ``app.state.tether``).
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Path as PathParam, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

from services.server.api_models import CommandAccepted, Run
from services.server.presets import Presets
from services.server.scheduler import Scheduler
from services.server.settings import ServiceSettings
from services.state.redis_store import TERMINAL, RunStore

MAX_STEP = 2**53  # steps are stream-id prefixes; larger values would reach Redis as invalid ids
RUN_ID = PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="A run id as returned by POST /runs (e.g. r-1a2b3c4d).")
# The token is checked by the Gate before the body is read; this dependency only declares the scheme in OpenAPI.
bearer = HTTPBearer(auto_error=False, description="The service token: env TETHER_API_TOKEN or <data_dir>/api_token.")
AUTH = [Depends(bearer)]


def combined_status(state: str, job_status: str | None) -> str:
    if state == "submitted" and job_status == "PENDING":
        return "pending"
    if state == "submitted" and job_status == "RUNNING":
        return "starting"
    return state


def relative_to(obj: Any, root: Path) -> Any:
    """``obj`` with every absolute path inside ``root`` written relative to it (what a client sees: no server layout)."""
    prefix = str(root).rstrip("/") + "/"
    if isinstance(obj, str):
        return obj.replace(prefix, "") if prefix in obj else ("." if obj == prefix[:-1] else obj)
    if isinstance(obj, dict):
        return {k: relative_to(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to(v, root) for v in obj]
    return obj


def invalid(fields: list[tuple[str, str]]) -> JSONResponse:
    """A 422 in the shape of request validation errors, for rules checked after parsing (limits, the cluster's size)."""
    message = "; ".join(f"{f}: {m}" for f, m in fields)
    detail = [{"loc": ["body", *f.split(".")], "field": f, "msg": m, "type": "value_error"} for f, m in fields]
    return JSONResponse(status_code=422, content={"message": f"invalid request: {message}", "detail": detail})


def submit_job(settings: ServiceSettings, rec: dict[str, Any]) -> None:
    """Submit a queued run's Ray job: prepare its assets, then train (the scheduler calls this when it admits the run)."""
    q = shlex.quote
    cfg_path, run_id = rec["config_path"], rec["id"]
    # in the run's own service folder (only its tether.yaml there): a model name can only be a hub name or an absolute path
    # the service wrote, never a folder relative to wherever the job happens to start
    entrypoint = (f"cd {q(str(Path(cfg_path).parent))} && {q(settings.tether_bin)} prepare {q(cfg_path)} && "
                  f"{q(settings.tether_bin)} train {q(cfg_path)} --run-id {run_id} --redis-url {q(settings.redis_url)}")
    settings.jobs.submit(entrypoint, job_id=rec["job_id"], env=settings.job_env)


def resume_job(settings: ServiceSettings, rec: dict[str, Any]) -> None:
    """A job whose driver died: continue its run folder from the checkpoint."""
    q = shlex.quote
    root = str(Path(rec["run_dir"]).parent)  # the trainer reports <run folder>/main; --resume takes the run folder
    entrypoint = (f"cd {q(str(Path(rec['config_path']).parent))} && "
                  f"{q(settings.tether_bin)} train --resume {q(root)} --run-id {rec['id']} --redis-url {q(settings.redis_url)}")
    settings.jobs.submit(entrypoint, job_id=rec["job_id"], env=settings.job_env)


@dataclass
class AppState:
    settings: ServiceSettings
    data_dir: Path  # settings.data_dir, resolved
    store: RunStore
    presets: Presets
    scheduler: Scheduler

    @classmethod
    def create(cls, settings: ServiceSettings) -> AppState:
        data_dir = Path(settings.data_dir).resolve()
        store = RunStore(settings.redis_url)
        presets = Presets(settings.presets_dir)
        # Without Ray (--no-ray) this replica stores and queues runs; a replica with Ray on the same Redis admits them.
        ray = settings.jobs is not None
        scheduler = Scheduler(store, settings.jobs, partial(submit_job, settings) if ray else None, max_runs=settings.max_runs,
                              resume=partial(resume_job, settings) if ray else None, job_retries=settings.job_retries)
        return cls(settings, data_dir, store, presets, scheduler)

    def get_record(self, run_id: str) -> dict[str, Any]:
        rec = self.store.get_run(run_id)
        if rec is None:
            raise HTTPException(404, f"no run with id {run_id!r}")
        return {"id": run_id, **rec}

    def view(self, rec: dict[str, Any], positions: dict[str, int] | None = None) -> Run:
        pos = (positions if positions is not None else self.scheduler.positions()).get(rec["id"]) if rec.get("state") == "queued" else None
        # a record written only by a trainer (fields missing) is still served whole, never a 500
        base = {"id": rec.get("id") or "", "name": rec.get("name") or rec.get("id") or "", "state": "submitted",
                "created": rec.get("updated") or 0.0, "updated": 0.0}
        rec = relative_to({**base, **rec}, self.data_dir)
        return Run(**{**rec, "queue_position": pos, "status": combined_status(rec["state"], rec.get("job_status"))})

    def run_dir(self, rec: dict[str, Any]) -> Path:
        d = rec.get("run_dir")
        if not d:
            raise HTTPException(404, "the run has not started yet (no run folder)")
        p = Path(d).resolve()
        if not p.is_relative_to(self.data_dir):
            raise HTTPException(404, "the run folder recorded for this run is outside the data directory; refusing to read it")
        return p

    def command(self, run_id: str, type_: str, args: dict | None = None) -> CommandAccepted:
        rec = self.get_record(run_id)
        if rec.get("state") in TERMINAL:
            raise HTTPException(409, f"run {run_id} is {rec['state']}: it takes no more commands")
        if rec.get("state") == "queued":  # not started: a command kept until then would act on a run nobody watches
            raise HTTPException(409, f"run {run_id} is queued (not started): {type_} applies once it runs; stop takes it off the queue")
        if type_ in ("pause", "resume"):
            # what the run will be once the commands it has not taken yet are applied: a command that changes nothing is a conflict
            paused = rec.get("state") == "paused"
            for c in self.store.commands(run_id):
                if not c.get("ack") and c.get("type") in ("pause", "resume"):
                    paused = c["type"] == "pause"
            if paused == (type_ == "pause"):
                raise HTTPException(409, f"run {run_id} is {'paused' if paused else 'not paused'} already (counting the commands it has not "
                                         f"taken yet): {type_} would change nothing")
        cid = self.store.send_command(run_id, type_, args or {})
        return CommandAccepted(run_id=run_id, command_id=cid, type=type_, args=args or {})


async def state(request: Request) -> AppState:
    """The dependency: this app's shared state."""
    return request.app.state.tether


State = Annotated[AppState, Depends(state)]
