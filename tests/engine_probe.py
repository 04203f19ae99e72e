"""Which of a rollout actor's child processes are vLLM's (its engine core and workers), by title or by how they started:
vLLM retitles them (`VLLM::EngineCore_DP0`, through setproctitle), and before that, or where the title does not reach
/proc/<pid>/comm, they are multiprocessing spawn children (`... spawn_main ...`)."""
from __future__ import annotations


def vllm_children(pid: int) -> list[str]:
    import psutil

    out = []
    for c in psutil.Process(pid).children(recursive=True):
        try:
            desc = f"{c.name()} {' '.join(c.cmdline())}"
        except psutil.Error:  # it ended meanwhile
            continue
        if "EngineCore" in desc or "VllmWorker" in desc or "spawn_main" in desc:
            out.append(desc[:200])
    return out
