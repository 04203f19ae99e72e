"""Ray job submission for the service and sweeps, and what a run declares of the cluster, with the Ray auth mode decided explicitly.

Ray 2.60 clusters started with ``RAY_AUTH_MODE=token`` (Ray's default for new local clusters when a
token exists) answer "Unauthorized: Missing authentication token" to clients without the token. The
service therefore takes ``ray_auth`` = ``token`` or ``disabled`` and, in token mode, sends the token
itself as a bearer header (from env RAY_AUTH_TOKEN, the file in RAY_AUTH_TOKEN_PATH, or
~/.ray/auth_token), so nothing depends on this process's global Ray environment.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Literal

from actors.placement import bundles
from learner.config import TetherConfig

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# progress bars and vLLM's per-reload loader lines say nothing about why a job failed
_NOISE = re.compile(r"(\d+%\|)|(Loading safetensors checkpoint shards)|(^\(\w+ pid=\d+\)\s*$)")


def log_tail(text: str, lines: int) -> list[str]:
    """The last ``lines`` informative lines of a job log: ANSI colours, progress bars and blank lines dropped."""
    out = []
    for raw in text.replace("\r", "\n").splitlines():
        ln = _ANSI.sub("", raw).rstrip()
        if ln.strip() and not _NOISE.search(ln):
            out.append(ln)
    return out[-lines:]


def find_ray_token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for p in (os.environ.get("RAY_AUTH_TOKEN_PATH"), str(Path.home() / ".ray" / "auth_token")):
        if p and Path(p).is_file():
            return Path(p).read_text().strip()
    return None


class RayJobs:
    """A lazily connected JobSubmissionClient (the dashboard may start after the service)."""

    def __init__(self, address: str = "http://127.0.0.1:8265", *, auth: Literal["token", "disabled"] = "token", token: str | None = None):
        if auth not in ("token", "disabled"):
            raise ValueError(f"ray auth mode must be 'token' or 'disabled', got {auth!r}")
        self.address, self.auth, self._token = address, auth, token
        self._client = None

    def headers(self) -> dict[str, str]:
        if self.auth == "disabled":
            return {}
        token = self._token or find_ray_token()
        if not token:
            raise RuntimeError("Ray auth mode is 'token' but no token was found: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
                               "(or ~/.ray/auth_token), or start the service with --ray-auth disabled for a cluster without auth")
        return {"Authorization": f"Bearer {token}"}

    def client(self):
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            self._client = JobSubmissionClient(self.address, headers=self.headers())
        return self._client

    def submit(self, entrypoint: str, *, job_id: str, env: dict[str, str] | None = None) -> str:
        log.info("submitting Ray job %s: %s", job_id, entrypoint)
        return self.client().submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": env or {}})

    def status(self, job_id: str) -> str | None:
        """PENDING, RUNNING, STOPPED, SUCCEEDED, FAILED; LOST when the cluster answers that the job does not exist
        (a restarted head forgets its jobs); None when the dashboard cannot be asked now."""
        try:
            return str(self.client().get_job_status(job_id).value)
        except Exception as e:  # noqa: BLE001 - status is informative; the Redis record still answers
            if "status code 404" in str(e) and "does not exist" in str(e):
                return "LOST"
            log.debug("no Ray status for %s: %s", job_id, e)
            return None

    def logs(self, job_id: str) -> str:
        return self.client().get_job_logs(job_id)

    def failure(self, job_id: str, *, lines: int = 25) -> str:
        """Why a job ended badly: Ray's status message (its first line) and the last ``lines`` lines of the job's log."""
        parts = []
        try:
            msg = (self.client().get_job_info(job_id).message or "").strip()
            if msg:
                # the first line; Ray appends the whole log after ", last available logs": the tail below has it
                parts.append("Ray: " + msg.splitlines()[0].split(", last available logs")[0])
        except Exception as e:  # noqa: BLE001 - the reason is best effort; the status already says it failed
            parts.append(f"Ray: (job info unavailable: {e})")
        try:
            tail = log_tail(self.logs(job_id), lines)
            if tail:
                parts.append("last lines of the job's log:\n" + "\n".join(tail))
        except Exception as e:  # noqa: BLE001
            parts.append(f"(job log unavailable: {e})")
        return "\n".join(parts)

    def cluster_resources(self) -> dict[str, float]:
        """Total CPU and GPU of the cluster's alive nodes, from the dashboard's state API (/api/v0/nodes)."""
        r = self.client()._do_request("GET", "/api/v0/nodes?limit=10000&detail=false")
        if r.status_code != 200:
            raise RuntimeError(f"the Ray dashboard at {self.address} answered {r.status_code} to /api/v0/nodes: {r.text[:200]}")
        nodes = r.json()["data"]["result"]["result"]
        alive = [n for n in nodes if n.get("state") == "ALIVE"]
        if not alive:  # a head that is still starting lists no node yet: that is "unknown", not "empty"
            raise RuntimeError(f"the Ray cluster at {self.address} lists no alive node yet")
        return {k: sum(float((n.get("resources_total") or {}).get(k, 0.0)) for n in alive) for k in ("CPU", "GPU")}

    def stop(self, job_id: str) -> bool:
        return bool(self.client().stop_job(job_id))


def run_resources(cfg: TetherConfig) -> dict[str, float]:
    """What a run declares: the sum of its placement group's bundles (Ray mode) or its torch threads (local mode)."""
    if cfg.runtime.mode == "local":
        return {"CPU": float(cfg.train.threads or 1), "GPU": 0.0}
    bs, _ = bundles(cfg.runtime)
    return {"CPU": float(sum(b.get("CPU", 0) for b in bs)), "GPU": float(sum(b.get("GPU", 0) for b in bs))}
