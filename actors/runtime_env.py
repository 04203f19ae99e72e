"""The environment of tether's actors and Ray jobs, in a module that imports no Ray: a local sweep, `tether reproduce
--plan` and the service read it without loading Ray; actors/placement.py passes it to ray.init."""
from __future__ import annotations

import os


def actor_env_vars() -> dict[str, str]:
    """The environment every tether actor needs: the one place that decides it (the driver's ray.init, the
    service's and the sweep's Ray jobs all take it from here)."""
    # vLLM logs every weight reload at INFO; the driver shows actor logs, so keep them to warnings.
    return {"TOKENIZERS_PARALLELISM": "false", "VLLM_LOGGING_LEVEL": os.environ.get("VLLM_LOGGING_LEVEL", "WARNING")}


def job_env_vars() -> dict[str, str]:
    """env_vars of a Ray job that runs `tether train` (service runs, sweep cells): the actors' env, one thread
    for the entrypoint process (its roles set their own thread counts)."""
    # RAY_JOB_STOP_WAIT_TIME_S: `ray job stop` sends SIGTERM, then SIGKILL after this many seconds (Ray's default 3);
    # closing the actors and the vLLM engines (which unlink their /dev/shm buffers) takes about 6 s here.
    return {"OMP_NUM_THREADS": "1", "RAY_JOB_STOP_WAIT_TIME_S": "30", **actor_env_vars()}
