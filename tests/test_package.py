"""The package surface: __all__ is complete, the README's library example runs, and
dependencies point down (the simulator imports nothing of the client side)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import bulkcred
import bulkcred.errors

from .conftest import sim_config

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "bulkcred"


def test_all_names_resolve_and_cover_the_exception_tree() -> None:
    for name in bulkcred.__all__:
        assert hasattr(bulkcred, name), name
    errors = {n for n in bulkcred.errors.__all__ if n[0].isupper()}
    assert errors <= set(bulkcred.__all__)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = path.parent.relative_to(ROOT).parts
            parts = list(base[: len(base) - (node.level - 1)])
            out.add(".".join(parts + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_the_simulator_imports_nothing_of_the_client_side() -> None:
    for path in (PKG / "sim").rglob("*.py"):
        for mod in _imports(path):
            assert not mod.startswith("bulkcred") or mod.startswith("bulkcred.sim"), (path, mod)


@pytest.mark.parametrize("module,forbidden", [
    ("models.py", ("client", "jobs", "cli", "runner", "journal")),
    ("errors.py", ("client", "jobs", "cli", "runner", "models")),
    ("limiter.py", ("client", "jobs", "cli", "runner")),
    ("retry.py", ("client", "jobs", "cli", "runner")),
    ("auth.py", ("client", "jobs", "cli", "runner")),
    ("client.py", ("jobs", "cli", "runner", "journal")),
    ("runner.py", ("jobs", "cli")),
    ("journal.py", ("client", "jobs", "cli")),
])
def test_dependencies_point_down(module: str, forbidden: tuple[str, ...]) -> None:
    for mod in _imports(PKG / module):
        for f in forbidden:
            assert not re.fullmatch(rf"bulkcred\.{f}(\..*)?", mod), (module, mod)


@pytest.mark.anyio
async def test_the_readme_library_example_runs() -> None:
    from bulkcred.sim import SimServer

    text = (ROOT / "README.md").read_text()
    code = re.search(r"## As a library\n\n```python\n(.*?)```", text, re.S).group(1)
    async with SimServer(sim_config(seed=1)) as s:
        code = code.replace('"https://config.private.zscaler.com"', repr(s.url))
        code = code.replace('client_id="..."', 'client_id="sim-client"')
        code = code.replace('Secret("...")', 'Secret("sim-secret")')
        code = code.replace("anyio.run(main)", "")
        ns: dict[str, object] = {}
        exec(compile(code, "README", "exec"), ns)  # noqa: S102 - the README's own example
        await ns["main"]()  # type: ignore[operator]
