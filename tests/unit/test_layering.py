"""The layering of README "Architecture": learner -> tasks -> actors -> services, each importing only the layers
before it; learner/ (and tasks/) never import ray, fastapi or redis (checked in a fresh interpreter)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_learner_and_tasks_import_no_runtime_packages():
    mods = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for layer in ("learner", "tasks") for p in (ROOT / layer).rglob("*.py") if p.name != "__init__.py"
    )
    code = "import sys\n" + "".join(f"import {m}\n" for m in mods) + "print(sorted(m for m in ('ray','fastapi','redis','vllm') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


def test_learner_sources_do_not_mention_runtime_imports():
    for p in [*(ROOT / "learner").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        text = p.read_text()
        for bad in ("import ray", "from ray", "import fastapi", "from fastapi", "import redis", "from redis"):
            assert bad not in text, f"{p} contains '{bad}'"


def test_imports_point_one_way():
    """services -> actors -> tasks -> learner: no layer imports one after it."""
    for layer, banned in (("learner", ("tasks", "actors", "services")), ("tasks", ("actors", "services")), ("actors", ("services",))):
        for p in (ROOT / layer).rglob("*.py"):
            text = p.read_text()
            for b in banned:
                assert f"from {b}" not in text and f"import {b}" not in text, f"{p} imports {b}"


def _project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its file (top level or inside a function)."""
    import ast

    mods = {}
    for layer in ("learner", "tasks", "actors", "services", "bench"):  # bench too: it had learn_phase <-> run_all <-> trl_side_by_side
        for p in (ROOT / layer).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = p
    graph = {}
    for name, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for t in targets:
                while t and t not in mods:  # `from learner.methods.kl import x` -> learner.methods.kl
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def test_no_import_circles():
    """No two project modules import each other, directly or through others (lazy imports count: a circle that
    only works because one side imports inside a function still ties the two files together)."""
    graph = _project_imports()
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                circles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_methods_and_analysis_are_pure_maths():
    """learner/methods and learner/analysis import only each other and learner.types: no models, assets or runtime."""
    for name, deps in _project_imports().items():
        if name.startswith(("learner.methods", "learner.analysis")):
            bad = [d for d in deps if not d.startswith(("learner.methods", "learner.analysis", "learner.types"))]
            assert not bad, f"{name} imports {bad}"


def test_local_mode_needs_no_ray():
    """runtime.mode=local runs the plain workers: importing them and the local role set loads no Ray."""
    code = "import sys, actors.workers, actors.roleset\nprint('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr[-2000:]


# services/ has three rooms and the state they share (README "Architecture"): each room may import only what is listed.
ROOMS = {
    # the run's Redis record, its folder's files, the Ray Jobs client and what a run declares of the cluster: no ML, no room
    "services.state": ("services.state", "learner.config", "actors.placement", "actors.runtime_env"),
    "services.server": ("services.state", "services.server", "learner.config", "actors.placement", "actors.runtime_env"),  # no torch, no driver
    "services.driver": ("services.state", "services.driver", "learner", "tasks", "actors"),
    "services.experiments": ("services.state", "services.driver", "services.experiments", "learner", "tasks", "actors"),
}


def test_each_room_of_services_imports_only_what_it_may():
    bad = []
    for name, deps in _project_imports().items():
        room = next((r for r in ROOMS if name == r or name.startswith(r + ".")), None)
        if room is None:
            continue
        bad += [f"{name} imports {d}" for d in deps if not any(d == a or d.startswith(a + ".") for a in ROOMS[room])]
    assert not bad, "\n".join(bad)


def test_services_top_level_holds_only_the_cli_and_its_tools():
    loose = sorted(p.name for p in (ROOT / "services").glob("*.py"))
    assert loose == ["__init__.py", "cli.py", "reward_server.py"], loose


def test_the_server_loads_no_torch_and_no_learner_beyond_the_config_schema():
    mods = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                  for room in ("server", "state") for p in (ROOT / "services" / room).rglob("*.py"))
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'vllm', 'tasks')"
              " or (m.startswith('learner.') and not m.startswith(('learner.config', 'learner.types')))))")  # the schema and its names
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
