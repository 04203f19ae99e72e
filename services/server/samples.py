"""The disagreement statistic of GET /runs/{id}/samples: pure arithmetic over one evaluation's scores."""
from __future__ import annotations

from collections.abc import Sequence

from services.state.runlog import finite_number


def disagreement(proxy: Sequence[float], gold: Sequence[object]) -> list[float | None]:
    """z(proxy) - z(gold) per sample, each z-scored within this evaluation (mean 0, population standard deviation 1; a constant
    score is only centred): large = the proxy rates the sample far above the gold. All None where a gold score is missing or not
    a finite number (a run without gold), and [] for no samples."""
    if not proxy or not all(finite_number(g) for g in gold):
        return [None] * len(proxy)
    import numpy as np  # here: the server imports no numpy until a run's samples are read

    p, g = np.array(proxy, float), np.array(gold, float)
    z = lambda a: (a - a.mean()) / (a.std() if a.std() > 0 else 1.0)  # noqa: E731
    return (z(p) - z(g)).tolist()
