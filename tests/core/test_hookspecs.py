"""The plugin API stays documented and tested (datasette's rule).

Every hook in united_core/hookspecs.py needs a heading with its exact signature
in docs/hooks.md and a ``test_hook_<name>`` test somewhere under tests/ (the
rules live in tests/support.py, shared with the directory's hookspecs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from support import check_hook_docstring, check_hook_documented, check_hook_has_a_test, hook_names

from united_core import hookspecs

HOOKS = hook_names(hookspecs)
DOC = Path(__file__).resolve().parents[2] / "docs" / "hooks.md"


def test_there_are_hooks() -> None:
    assert len(HOOKS) >= 14


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name: str) -> None:
    check_hook_documented(hookspecs, name, DOC)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name: str) -> None:
    check_hook_has_a_test(name)


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_docstring_says_what_it_returns_or_does(name: str) -> None:
    check_hook_docstring(hookspecs, name)
