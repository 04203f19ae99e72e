"""The samples page's disagreement statistic (services/server/samples.py), against numbers worked out by hand:
z(proxy) - z(gold), each z-scored within the evaluation with the population standard deviation."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

from services.server.samples import disagreement

ROOT = Path(__file__).resolve().parents[2]


def test_opposite_rankings():
    # proxy 1, 2, 3: mean 2, std sqrt(2/3), z = -sqrt(3/2), 0, sqrt(3/2); gold 3, 2, 1 the mirror: each difference is 2*sqrt(3/2) = sqrt(6)
    assert disagreement([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx([-math.sqrt(6), 0.0, math.sqrt(6)])


def test_agreement_is_zero_whatever_the_scale():
    # gold = 10 * proxy - 7: the same z-scores, no disagreement
    assert disagreement([0.5, 1.5, 4.0], [-2.0, 8.0, 33.0]) == pytest.approx([0.0, 0.0, 0.0], abs=1e-12)


def test_skewed_proxy():
    # proxy 0, 0, 0, 4: mean 1, variance (1+1+1+9)/4 = 3, z = -1/sqrt(3) (three times), 3/sqrt(3) = sqrt(3);
    # gold 2, 0, 0, 2 (ints count): mean 1, std 1, z = 1, -1, -1, 1
    s = 1 / math.sqrt(3)
    assert disagreement([0.0, 0.0, 0.0, 4.0], [2, 0, 0, 2]) == pytest.approx([-s - 1, -s + 1, -s + 1, math.sqrt(3) - 1])


def test_constant_gold_is_only_centred():
    # gold 5, 5: std 0, so z(gold) = gold - mean = 0, 0; proxy 2, 4: mean 3, std 1, z = -1, 1
    assert disagreement([2.0, 4.0], [5.0, 5.0]) == pytest.approx([-1.0, 1.0])


def test_constant_both_is_zero():
    assert disagreement([3.0, 3.0, 3.0], [1.0, 1.0, 1.0]) == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("gold", [[1.0, None], [1.0, float("nan")], [1.0, float("inf")], [1.0, True], [1.0, "2"]])
def test_a_missing_or_unusable_gold_gives_none_for_every_sample(gold):
    assert disagreement([1.0, 2.0], gold) == [None, None]


def test_no_samples():
    assert disagreement([], []) == []


def test_a_single_sample_is_zero():
    assert disagreement([7.0], [-3.0]) == [0.0]


def test_importing_it_loads_no_server():
    code = "import sys, services.server.samples\nprint(sorted(m for m in ('fastapi', 'ray', 'redis', 'vllm', 'torch') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]", out.stdout
