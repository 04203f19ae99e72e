"""Steering a run: pause, resume, stop, reset, live parameter changes, and what it was sent and changed."""
from __future__ import annotations

from fastapi import APIRouter, HTTPException

from learner.config import config_from_dump
from services.server.api_models import CommandAccepted, CommandInfo, Error, ParamChange, ParamUpdate, errors
from services.server.deps import AUTH, RUN_ID, State

router = APIRouter(tags=["control"], dependencies=AUTH)

COMMANDS = (("pause", "Pause between iterations (the trainer blocks until resume or stop)."),
            ("resume", "Resume a paused run."),
            ("stop", "Stop after the current iteration, with a checkpoint (state 'stopped'); a queued run is taken off the "
                     "queue (state 'cancelled')."),
            ("reset", "Elastic Reset now: policy <- EMA, EMA <- initial, then a weight sync (needs elastic_reset.enabled)."))


def _command_endpoint(kind: str):
    def endpoint(st: State, run_id: str = RUN_ID) -> CommandAccepted:
        rec = st.get_record(run_id)
        if kind == "reset" and not (rec.get("config") or {}).get("elastic_reset", {}).get("enabled"):
            raise HTTPException(409, "reset needs elastic_reset.enabled: true in the run's config (there is no EMA to reset to)")
        if kind == "stop" and rec.get("state") == "queued" and st.scheduler.cancel(run_id):
            return CommandAccepted(run_id=run_id, command_id="cancelled", type="stop", args={})
        return st.command(run_id, kind)

    endpoint.__name__ = f"{kind}_run"
    return endpoint


for _kind, _doc in COMMANDS:
    router.post(f"/runs/{{run_id}}/{_kind}", response_model=CommandAccepted, status_code=202, summary=_doc, name=f"{_kind}_run",
                responses=errors(404, 409))(_command_endpoint(_kind))


@router.patch("/runs/{run_id}/params", response_model=CommandAccepted, status_code=202,
              responses={409: {"model": Error, "description": "The run is over, or its config does not have this parameter "
                                                             "(e.g. kl_target with a fixed KL coefficient); the detail names it."},
                         **errors(404)})
def set_params(st: State, body: ParamUpdate, run_id: str = RUN_ID):
    """Change parameters that are safe to change mid-run; the trainer applies them between iterations and
    records each change with its time and step (GET /runs/{id}/changes)."""
    rec = st.get_record(run_id)
    try:
        body.check_against(config_from_dump(rec["config"]))
    except ValueError as e:  # a well-formed request that this run's configuration cannot take: a conflict, not bad syntax
        raise HTTPException(409, str(e)) from None
    return st.command(run_id, "set", body.model_dump(exclude_none=True))


@router.get("/runs/{run_id}/commands", response_model=list[CommandInfo], responses=errors(404))
def list_commands(st: State, run_id: str = RUN_ID) -> list[dict]:
    st.get_record(run_id)
    return st.store.commands(run_id)


@router.get("/runs/{run_id}/changes", response_model=list[ParamChange], responses=errors(404))
def list_changes(st: State, run_id: str = RUN_ID) -> list[dict]:
    st.get_record(run_id)
    return st.store.changes(run_id)
