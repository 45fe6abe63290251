"""app/net sits below the domains: it imports none of them, and no domain reaches the network
through the collectors (webhooks import app.net, as the collectors do)."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).parents[2] / "app"


def _imports(folder: Path) -> dict[str, set[str]]:
    """Every app module imported by each file under ``folder``, function-level imports too."""
    found: dict[str, set[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[str(path.relative_to(APP.parent))] = {
            name for name in names if name == "app" or name.startswith("app.")
        }
    return found


def _reaching(folder: Path, packages: tuple[str, ...]) -> dict[str, list[str]]:
    return {
        path: sorted(name for name in names if name.startswith(packages))
        for path, names in _imports(folder).items()
        if any(name.startswith(packages) for name in names)
    }


def test_net_imports_nothing_above_it() -> None:
    above = ("app.domain", "app.collectors", "app.scheduler", "app.main", "app.cli", "app.web")
    assert _imports(APP / "net"), "app/net has modules"
    assert _reaching(APP / "net", above) == {}


def test_no_domain_imports_the_collectors() -> None:
    assert _reaching(APP / "domain", ("app.collectors",)) == {}
    assert "app.net" in _imports(APP / "domain" / "webhooks")["app/domain/webhooks/deliver.py"]
