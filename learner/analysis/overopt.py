"""Did a run over-optimise? The gold curve's peak and fall, and the proxy's course after the gold peak.

Measured on a run's evaluations (held-out prompts, the same ones at every evaluation):
  gain          = peak - initial gold, the peak taken on a centred 3-point moving average (one noisy
                  evaluation of 64 prompts does not make a peak);
  fall_fraction = (peak - final) / gain, final = the mean of the last 3 evaluations;
  proxy_rise    = final proxy (mean of the last 3) - proxy at the gold peak (smoothed alike): > 0 means the proxy kept rising
                  while the gold fell, Gao et al.'s over-optimisation.
`overoptimised` applies the threshold of the claim (a fall of at least `min_fall` of the gain with a
positive gain and a rising proxy).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class OverOpt:
    peak_index: int
    peak_step: float
    initial: float
    peak: float
    final: float
    gain: float
    fall_fraction: float
    proxy_at_peak: float
    proxy_final: float
    proxy_rise: float
    kl_at_peak: float | None
    kl_final: float | None

    def overoptimised(self, min_fall: float = 0.3) -> bool:
        return self.gain > 0 and self.fall_fraction >= min_fall and self.proxy_rise > 0

    def as_dict(self) -> dict:
        return asdict(self)


def smooth3(y: np.ndarray) -> np.ndarray:
    """Centred 3-point moving average; the two ends average what they have."""
    y = np.asarray(y, dtype=np.float64)
    if y.size < 3:
        return y.copy()
    out = np.convolve(y, np.ones(3) / 3, mode="same")
    out[0] = y[:2].mean()
    out[-1] = y[-2:].mean()
    return out


def peak_and_fall(steps, gold, proxy, kl=None, *, tail: int = 3) -> OverOpt:
    """steps, gold, proxy (and KL) at each evaluation, in order; at least 3 evaluations."""
    steps, gold, proxy = (np.asarray(a, dtype=np.float64) for a in (steps, gold, proxy))
    if not (len(steps) == len(gold) == len(proxy)) or len(gold) < 3:
        raise ValueError(f"need at least 3 evaluations with steps, gold and proxy of one length (got {len(steps)}, {len(gold)}, {len(proxy)})")
    if not (np.all(np.isfinite(gold)) and np.all(np.isfinite(proxy))):
        raise ValueError("gold and proxy must be finite at every evaluation")
    s = smooth3(gold)
    i = int(np.argmax(s))
    initial, peak = float(gold[0]), float(s[i])
    final = float(gold[-tail:].mean())
    gain = peak - initial
    fall = (peak - final) / gain if gain > 0 else 0.0
    p_peak = float(smooth3(proxy)[i])
    p_final = float(proxy[-tail:].mean())
    kla = None if kl is None else np.asarray(kl, dtype=np.float64)
    return OverOpt(i, float(steps[i]), initial, peak, final, gain, float(fall), p_peak, p_final, p_final - p_peak,
                   None if kla is None else float(kla[i]), None if kla is None else float(kla[-tail:].mean()))

