"""Polling helper shared by the tests that watch a live run, server or browser."""
import time


def wait_for(cond, timeout: float = 120.0, what: str = "condition", interval: float = 0.1):
    """Return cond()'s first truthy value, or fail naming what never happened."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
