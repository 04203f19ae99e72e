"""What a run prints to the console (its progress bar and one line per iteration) and its end-of-run summary."""
from __future__ import annotations

from tqdm.auto import tqdm

SUMMARY_PREFIXES = ("reward/", "kl/", "drift/", "fdpg/", "quark/")  # the last iteration's metrics a summary keeps


def progress_bar(name: str, total: int, initial: int, *, enabled: bool):
    return tqdm(total=total, initial=initial, desc=f"train {name}", unit="it", disable=not enabled)


def print_iteration(name: str, iteration: int, m: dict[str, float]) -> None:
    """One iteration's line (above the progress bar): proxy and gold reward, KL from pi_0, the KL coefficient, seconds."""
    tqdm.write(
        f"[{name}] it {iteration:3d}  proxy {m['reward/proxy_mean']:+.3f}  gold {m['reward/gold_mean']:+.3f}  "
        f"KL(init) {m['kl/from_init']:6.2f}  " + (f"beta {m['kl/coef']:.4f}  " if "kl/coef" in m else "") + f"{m['time_s/iteration']:.1f}s"
        + ("  RESET" if m.get("elastic_reset/event") else "")
    )


def run_summary(last: dict, final: dict, guard_alarm: dict | None) -> dict:
    """summary.json: the last iteration's reward, KL and method metrics, the final evaluation, the guard's alarm if any."""
    summary = {**{k: v for k, v in last.items() if k.startswith(SUMMARY_PREFIXES)}, **final}
    if guard_alarm is not None:
        summary["guard"] = guard_alarm
    return summary
