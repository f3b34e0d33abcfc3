"""The shape of the code, checked: no import cycles, a pure core, exporters that see only a
snapshot. Read from the sources (every import, including those inside functions and under
TYPE_CHECKING), so a lazy import cannot hide a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Import name: folder. The installer's folder is installer/, its import name lvscare_installer
# (PyPA's ``installer`` package owns the plain name).
PACKAGES = {"lvscare": "lvscare", "lvscare_installer": "installer/lvscare_installer"}

# Decisions only: no clock, no sockets, no tasks, no logging (they return events instead). The
# installer's plan also uses the manifest's argument builder, which only parses.
PURE = {"lvscare", "lvscare.config", "lvscare.plan", "lvscare.health", "lvscare.core",
        "lvscare.snapshot", "lvscare.errors", "lvscare_installer", "lvscare_installer.plan",
        "lvscare_installer.hosts", "lvscare.members"}
PURE_USES = {"lvscare_installer.plan": {"lvscare.staticpod"}}
EFFECTFUL = {"asyncio", "subprocess", "aiohttp", "structlog", "time", "threading", "urllib", "http",
             "fabric", "paramiko", "lvscare.netlink", "lvscare.ipvs", "lvscare.rtnl", "lvscare.vip"}
EXPORTERS = {"lvscare.metrics", "lvscare.web", "lvscare.status"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = [package, *path.relative_to(REPO / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def imports(module: str) -> set[str]:
    """Every module this one names in an import statement, stdlib and third party included."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            found.add(base)
            # ``from lvscare import web`` imports the module lvscare.web.
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES}
    return found


def internal(module: str) -> set[str]:
    return {m for m in imports(module) if m in MODULES and m != module}


def test_there_is_no_import_cycle() -> None:
    graph = {m: internal(m) for m in MODULES}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*path[path.index(n):], n])
            elif n not in state:
                visit(n, [*path, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_core_decides_without_effects() -> None:
    for module in sorted(PURE):
        named = imports(module)
        effects = {m for m in named if m.split(".")[0] in EFFECTFUL or m in EFFECTFUL}
        assert not effects, f"{module} imports {sorted(effects)}"
        allowed = PURE | PURE_USES.get(module, set())
        assert internal(module) <= allowed, f"{module} imports {sorted(internal(module) - allowed)}"


def test_exporters_render_a_snapshot_and_never_see_the_daemon() -> None:
    for module in sorted(EXPORTERS):
        assert not internal(module) & {"lvscare.daemon", "lvscare.core"}, module


def test_the_check_sees_a_cycle_and_a_lazy_import() -> None:
    """The checks above could pass by reading nothing: prove they read what they claim."""
    assert "lvscare.staticpod" in internal("lvscare_installer.plan")  # imported inside a function
    assert "lvscare.ipvs" in imports("lvscare.effects")  # imported under TYPE_CHECKING
    assert "lvscare.config" in internal("lvscare.core")


def test_the_readme_layout_names_every_module_and_only_what_exists() -> None:
    import re

    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("| path | what |"):]
    named = set(re.findall(r"`([\w./-]+)`", table))
    for path in named:
        if "/" in path and not path.startswith("/"):  # a path, not a URL path or a bare name
            assert (REPO / path.rstrip("/")).exists(), path
    for module in MODULES:
        if module.startswith("lvscare.") and module != "lvscare.__main__":
            assert f"lvscare/{module.split('.', 1)[1]}.py" in named, f"{module} missing from README"
