"""The unit tier's rule, checked around every test: a unit test loads no Ray and no vLLM (those tests belong in
tests/integration), so `pytest tests/unit` stays the minutes-long inner loop. The check bites when the unit tier runs on its
own: in a full `make test` the integration modules, collected before any test runs, have already imported Ray."""
from __future__ import annotations

import sys

import pytest

RUNTIME = ("ray", "vllm")


@pytest.fixture(autouse=True)
def _loads_no_runtime(request):
    before = {m for m in RUNTIME if m in sys.modules}
    yield
    loaded = sorted(m for m in RUNTIME if m in sys.modules and m not in before)
    if loaded:
        pytest.fail(f"{request.node.nodeid} imported {', '.join(loaded)}: unit tests load no Ray or vLLM; move it to tests/integration")
