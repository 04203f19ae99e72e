"""The vLLM warnings tether filters (actors/vllm_logging.py) and those it does not, on the loggers that emit them."""
import logging

from actors import vllm_logging


def _record(logger: str, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord(logger, logging.WARNING, __file__, 1, msg, args, None)


def test_only_the_measured_preload_advice_and_the_rotary_reload_are_filtered():
    vllm_logging.install()
    vllm_logging.install()  # idempotent
    cpu = logging.getLogger(vllm_logging.CPU_WORKER)
    assert cpu.filters.count(vllm_logging._FILTER) == 1
    f = vllm_logging._FILTER
    before = vllm_logging.hidden
    advice = "%s is not found in LD_PRELOAD. For best performance, please follow the section `set LD_PRELOAD` in ..."
    assert not f.filter(_record(vllm_logging.CPU_WORKER, advice, "libtcmalloc"))
    assert not f.filter(_record(vllm_logging.CPU_WORKER, advice, "libiomp"))
    assert not f.filter(_record(vllm_logging.LAYERWISE, "%s: Failed to load weights", "RotaryEmbedding"))
    assert vllm_logging.hidden == before + 3
    assert f.filter(_record(vllm_logging.CPU_WORKER, advice, "libsomethingelse"))  # an unmeasured library still warns
    assert f.filter(_record(vllm_logging.CPU_WORKER, "CPU backend doesn't allow to use `torch.set_num_threads` ..."))
    assert f.filter(_record(vllm_logging.LAYERWISE, "%s: Failed to load weights", "QKVParallelLinear"))
