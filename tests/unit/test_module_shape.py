"""Every module of taskgraph/, scheduler/ and worker/ is read in one sitting: it
opens with a docstring (what it owns) and is at most ``MAX_LINES`` long.

Why 600: issue 12 asks for modules of about 600 lines at most, each split by
what it owns; the modules that prompted it had grown to 619-655 lines, so a
looser bound would not have caught them. Lines are counted as ``wc -l`` does
(docstrings, comments and blank lines too), so anyone can check by hand. A
module that must stay over it while someone splits it is listed in
``OVER_FOR_NOW`` at its size then, and may not grow."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = ("taskgraph", "scheduler", "worker")
MAX_LINES = 600
OVER_FOR_NOW: dict[str, int] = {}


def modules() -> list[Path]:
    found = [p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    assert len(found) > 90, "the three packages were not found"
    return found


def name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_every_module_opens_with_a_docstring() -> None:
    missing = [
        name(p)
        for p in modules()
        if not (ast.get_docstring(ast.parse(p.read_text())) or "").strip()
    ]
    assert missing == [], f"modules with no opening docstring (say what each owns): {missing}"


def test_every_module_is_at_most_the_bound() -> None:
    sizes = {name(p): len(p.read_text().splitlines()) for p in modules()}
    too_long = {
        path: lines for path, lines in sizes.items() if lines > OVER_FOR_NOW.get(path, MAX_LINES)
    }
    assert too_long == {}, (
        f"modules over {MAX_LINES} lines (split each by what it owns): {too_long}"
    )


def test_a_module_listed_as_over_for_now_still_is() -> None:
    """Once split, its entry goes: the bound applies to it again."""
    back_under = [
        path for path in OVER_FOR_NOW if len((ROOT / path).read_text().splitlines()) <= MAX_LINES
    ]
    assert back_under == [], f"remove from OVER_FOR_NOW: {back_under}"
