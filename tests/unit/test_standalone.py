"""The repository stands alone: no file points readers to notes that live outside it.

The developers' machines keep some notes beside the checkout (``../shared/``); they are not part of
the repository, so a reference to them is a dead link for everyone else. What they said that the
code relies on is in docs/methods.md and docs/cpu-notes.md.
"""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("../shared", "PAPERS.md", "ENVIRONMENT.md", "STYLE.md")
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()


def _repo_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore (a new file must not slip through before its first commit)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, timeout=60, check=True)
    return sorted({p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p})


def test_no_file_points_outside_the_repository():
    offending = []
    for rel in _repo_files():
        if rel == SELF:
            continue
        path = ROOT / rel
        if not path.is_file():  # deleted in the working tree, or a submodule
            continue
        with path.open("rb") as fh:
            if b"\0" in fh.read(8192):  # binary (images, weights)
                continue
        data = path.read_bytes()
        for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
            found = [bad for bad in FORBIDDEN if bad in line]
            if found:
                offending.append(f"{rel}:{n}: {', '.join(found)}: {line.strip()[:160]}")
    assert not offending, "references to files outside the repository (use docs/methods.md or docs/cpu-notes.md):\n" + "\n".join(offending)
