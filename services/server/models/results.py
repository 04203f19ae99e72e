"""The bodies of the metrics and results routes (metric rows, evaluation samples, checkpoints)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

class MetricRow(BaseModel):
    """One logged iteration: step, time and slash-named metrics (reward/gold_mean, kl/from_init, ...)."""

    model_config = ConfigDict(extra="allow", json_schema_extra={"examples": [{"id": "12-1", "step": 12, "time": 1795500100.0,
                                                                               "reward/proxy_mean": 0.8, "reward/gold_mean": 0.4, "kl/from_init": 3.1}]})
    id: str
    step: int
    time: float


class Sample(BaseModel):
    """One held-out sample of an evaluation: what the policy wrote and how each scorer rated it."""

    prompt: str
    response: str
    proxy: float = Field(description="The proxy ensemble's aggregate (what the policy is trained on).")
    proxy_members: list[float] = Field(description="Each ensemble member's score.")
    gold: float | None = Field(None, description="The held-out gold score (None where the run has no gold).")
    disagreement: float | None = Field(None, description="z(proxy) - z(gold) within this evaluation: large = the proxy likes it far more "
                                                        "than the gold does.")


class SamplesPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"run_id": "r-1a2b3c4d", "step": 12, "steps": [0, 2, 4, 6, 8, 10, 12], "order": "proxy",
                                                               "total": 64, "samples": [{"prompt": "This film", "response": " is a gem ...",
                                                                                         "proxy": 2.1, "proxy_members": [2.0, 2.3], "gold": 1.4,
                                                                                         "disagreement": 0.3}]}]})
    run_id: str
    step: int = Field(description="The iteration whose evaluation these samples are (0 = the initial policy).")
    steps: list[int] = Field(description="Every evaluated iteration with samples.")
    order: str
    total: int = Field(description="Samples in this evaluation (before `count`).")
    samples: list[Sample]


class Checkpoint(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"name": "step-000016", "step": 16, "path": "/srv/tether/runs/r-1/x/main/checkpoints/step-000016", "time": 1795500100.0}]})
    name: str
    step: int
    path: str
    time: float | None = None
