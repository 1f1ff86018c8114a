"""The plugin API stays documented and tested (datasette's rule).

Every hook in united_core/hookspecs.py needs a heading with its exact signature
in docs/hooks.md and a ``test_hook_<name>`` test somewhere under tests/.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from united_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(
    name for name, obj in vars(hookspecs).items() if name.startswith("united_") and callable(obj)
)


def signature_heading(name: str) -> str:
    params = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(params)})"


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 14


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name: str) -> None:
    docs = (ROOT / "docs" / "hooks.md").read_text()
    headings = set(re.findall(r"^###\s+`?([^`\n]+)`?\s*$", docs, flags=re.M))
    assert signature_heading(name) in headings, (
        f"docs/hooks.md needs '### {signature_heading(name)}'"
    )


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name: str) -> None:
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert f"def test_hook_{name}(" in tests


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_docstring_says_what_it_returns_or_does(name: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, name)) or ""
    assert len(doc.splitlines()) >= 2, f"{name} needs a real docstring"
