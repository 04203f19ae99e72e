"""learner/ never imports ray, fastapi or redis (the layering in README "Architecture"): checked in a fresh interpreter."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_learner_imports_no_runtime_packages():
    mods = sorted(
        "learner." + ".".join(p.relative_to(ROOT / "learner").with_suffix("").parts)
        for p in (ROOT / "learner").rglob("*.py") if p.name != "__init__.py"
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print(sorted(m for m in ('ray','fastapi','redis','vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_learner_sources_do_not_mention_runtime_imports():
    for p in (ROOT / "learner").rglob("*.py"):
        text = p.read_text()
        for bad in ("import ray", "from ray", "import fastapi", "from fastapi", "import redis", "from redis"):
            assert bad not in text, f"{p} contains '{bad}'"


def test_imports_point_one_way():
    """services -> actors -> learner: learner imports neither, actors never import services."""
    for layer, banned in (("learner", ("actors", "services")), ("actors", ("services",))):
        for p in (ROOT / layer).rglob("*.py"):
            text = p.read_text()
            for b in banned:
                assert f"from {b}" not in text and f"import {b}" not in text, f"{p} imports {b}"
