"""The directory's hooks stay documented and tested, like the core's
(tests/core/test_hookspecs.py; the shared rules are in tests/support.py).

Every hook in united_directory/hookspecs.py needs a heading with its exact
signature in docs/directory.md and a ``test_hook_<name>`` test somewhere under
tests/. The specs are added by the directory plugins only, and adding them
twice (a node with both halves) is harmless.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pluggy
import pytest
from support import check_hook_docstring, check_hook_documented, check_hook_has_a_test, hook_names
from united_directory import hookspecs

from united_core.plugins import get_plugin_manager

ROOT = Path(__file__).resolve().parents[3]
HOOKS = hook_names(hookspecs)
DOC = ROOT / "docs" / "directory.md"


def test_the_hooks_are_the_directorys_five() -> None:
    assert HOOKS == sorted(hookspecs.HOOKS)
    assert len(HOOKS) == 5


@pytest.mark.parametrize("name", HOOKS)
def test_hook_is_documented(name: str) -> None:
    check_hook_documented(hookspecs, name, DOC)


@pytest.mark.parametrize("name", HOOKS)
def test_hook_has_a_test(name: str) -> None:
    check_hook_has_a_test(name)


@pytest.mark.parametrize("name", HOOKS)
def test_hookspec_docstring_says_what_it_returns_or_does(name: str) -> None:
    check_hook_docstring(hookspecs, name)


@pytest.mark.parametrize("name", HOOKS)
def test_the_core_does_not_specify_it(name: str) -> None:
    from united_core import hookspecs as core_hookspecs

    assert not hasattr(core_hookspecs, name)


@pytest.mark.parametrize(
    "plugins",
    [["directory"], ["discovery"], ["directory", "discovery"], ["discovery", "directory"]],
)
def test_either_half_adds_the_specs_once(plugins: list[str]) -> None:
    pm = get_plugin_manager(plugins)
    for name in HOOKS:
        assert getattr(pm.hook, name).spec is not None
    hookspecs.add_to(pm)  # again: a no-op, where pluggy would refuse a second spec
    with pytest.raises(ValueError):
        pm.add_hookspecs(hookspecs)


@pytest.mark.parametrize("plugins", [["ping"], ["mesh"], ["mesh", "membership", "archive"]])
def test_without_the_directory_its_hooks_do_not_exist_and_nothing_breaks(
    plugins: list[str],
) -> None:
    """Plugins implementing directory hooks load without the directory: the archive's
    module-level handler is an optional hook, and hook objects (mesh, membership)
    register fine with no spec; nothing calls them."""
    pm = get_plugin_manager(plugins)
    for name in HOOKS:
        caller = getattr(pm.hook, name, None)
        assert caller is None or caller.spec is None

    hookimpl = pluggy.HookimplMarker("united")

    class LateHooks:
        @hookimpl
        def united_members_changed(self, members: object) -> None:
            raise AssertionError("never called")

    pm.register(LateHooks())  # what the node does with a plugin's hooks object
    assert pm.hook.united_members_changed.spec is None


def test_the_core_does_not_import_the_directory() -> None:
    """The core is protocol-neutral: no module of it names the directory's package."""
    imports = re.compile(r"^\s*(?:from|import)\s+(united_directory|\.+frames\b|\.+members\b)", re.M)
    for path in (ROOT / "united_core").rglob("*.py"):
        assert not imports.search(path.read_text()), path
    assert not (ROOT / "united_core" / "frames.py").exists()
    assert not (ROOT / "united_core" / "members.py").exists()


def test_other_plugins_do_not_import_the_directory_at_run_time() -> None:
    """They use the objects the hooks pass; the directory's modules are for mypy only."""
    code = (
        "import sys, united_archive, united_cache, united_membership, united_mesh, united_ping\n"
        "print(sorted(m for m in sys.modules if m.startswith('united_directory')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
