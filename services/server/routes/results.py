"""What a run leaves: its HTML report, the samples of each held-out evaluation, its checkpoints."""
from __future__ import annotations

import json
from typing import Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse

from services.server.api_models import Checkpoint, Sample, SamplesPage, errors
from services.server.deps import AUTH, MAX_STEP, RUN_ID, State
from services.server.samples import disagreement
from services.state.runlog import finite_number, read_samples, sample_steps

router = APIRouter(tags=["results"], dependencies=AUTH)


@router.get("/runs/{run_id}/report", response_class=HTMLResponse,
            responses={200: {"content": {"text/html": {"schema": {"type": "string"}}}, "description": "The HTML report."},
                       **errors(404, 409)})
def report(st: State, run_id: str = RUN_ID):
    """The run's HTML report (written when the run ends; 409 before)."""
    rec = st.get_record(run_id)
    p = st.run_dir(rec) / "report.html" if rec.get("run_dir") else None
    if p is None or not p.exists():  # the run exists; its state does not have a report yet
        raise HTTPException(409, f"no report yet: run {run_id} is {rec.get('state')}; the report is written when the run ends")
    return FileResponse(p, media_type="text/html")


@router.get("/runs/{run_id}/samples", response_model=SamplesPage, responses=errors(404, 409))
def samples(st: State, run_id: str = RUN_ID,
            step: int | None = Query(None, ge=0, le=MAX_STEP, description="The evaluated iteration (default: the latest)."),
            order: Literal["logged", "proxy", "proxy_low", "disagreement"] = Query(
                "logged", description="logged; proxy = best first; proxy_low = worst first; disagreement = the samples the proxy "
                "rates far above the gold first."),
            count: int | None = Query(None, ge=1, le=10_000, description="At most this many samples.")) -> SamplesPage:
    """The samples of one held-out evaluation (prompt, response, each proxy member, the aggregate, gold), as the run wrote them."""
    rec = st.get_record(run_id)
    if not rec.get("run_dir"):
        raise HTTPException(409, f"no samples yet: run {run_id} is {rec.get('state')} and has not evaluated")
    d = st.run_dir(rec)
    steps = sample_steps(d)
    if not steps:
        raise HTTPException(409, f"no samples yet: run {run_id} has not finished an evaluation")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        shown = ", ".join(map(str, steps[:10])) + (f", ... {steps[-1]}" if len(steps) > 10 else "")
        raise HTTPException(404, f"no evaluation at step {step} of run {run_id}; evaluated steps: {shown}")
    rows = [r for r in read_samples(d, step) if finite_number(r.get("proxy"))]
    dis = disagreement([r["proxy"] for r in rows], [r.get("gold") for r in rows])
    items = [Sample(prompt=str(r.get("prompt", "")), response=str(r.get("response", "")), proxy=float(r["proxy"]),
                    proxy_members=[float(x) for x in r.get("proxy_members") or [] if finite_number(x)],
                    gold=float(r["gold"]) if finite_number(r.get("gold")) else None, disagreement=dv) for r, dv in zip(rows, dis)]
    if order == "proxy":
        items.sort(key=lambda x: -x.proxy)
    elif order == "proxy_low":
        items.sort(key=lambda x: x.proxy)
    elif order == "disagreement":
        items.sort(key=lambda x: -(x.disagreement if x.disagreement is not None else -1e300))
    return SamplesPage(run_id=run_id, step=step, steps=steps, order=order, total=len(items), samples=items[:count] if count else items)


@router.get("/runs/{run_id}/checkpoints", response_model=list[Checkpoint], responses=errors(404))
def checkpoints(st: State, run_id: str = RUN_ID) -> list[Checkpoint]:
    rec = st.get_record(run_id)
    if not rec.get("run_dir"):
        return []  # not started yet: no checkpoints
    root = st.run_dir(rec) / "checkpoints"
    if not root.exists():
        return []
    out = []
    for p in sorted(root.glob("step-*")):
        if (p / "driver.json").exists():
            t = json.loads((p / "driver.json").read_text()).get("time")
            out.append(Checkpoint(name=p.name, step=int(p.name.split("-")[1]), path=str(p.relative_to(st.data_dir)), time=t))
    return out
