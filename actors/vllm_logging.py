"""vLLM warnings known to be harmless for tether, filtered on the logger that emits them (nothing else is hidden).

- ``RotaryEmbedding: Failed to load weights`` (vllm/model_executor/model_loader/reload/layerwise.py, at every in-place
  weight reload): a rotary embedding has no weights in a checkpoint, only its cos/sin cache, which vLLM computes and then
  places back, as the warning's own branch does. Every weight sync printed it; a new user read it as a failure. A layer of
  any other class that fails to load still warns.
"""
from __future__ import annotations

import logging

LAYERWISE = "vllm.model_executor.model_loader.reload.layerwise"
hidden = 0  # how many were filtered in this process (the test reads it: the warning happened and did not reach the log)


class _KnownHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        global hidden
        if record.msg == "%s: Failed to load weights" and record.args and str(record.args[0]).endswith("RotaryEmbedding"):
            hidden += 1
            return False
        return True


_FILTER = _KnownHarmless()


def install() -> None:
    """Idempotent; call in every process that runs vLLM's model (the engine's and its workers')."""
    logger = logging.getLogger(LAYERWISE)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
