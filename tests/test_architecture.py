"""The shape of ``daemon/``: its layers, no import circle, the size limits, a light command line.

Read from the source with ``ast`` (nothing of the package runs but the last
test), so a layer broken, a circle closed or a class grown past its limit
fails here, not in a review. docs/architecture.md draws the layers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "daemon"
MAX_CLASS_LINES = 150
MAX_FUNCTION_LINES = 50

# What each layer may import (its own modules included). The base is the top
# level of daemon/ (config, errors, files, imaging, results, tasks, draw).
ALLOWED = {
    "base": {"base"},
    "model": {"base", "model"},
    "index": {"base", "index"},
    "metadata": {"base", "index", "metadata"},
    "service": {"base", "model", "index", "metadata", "service"},
    "web": {"base", "model", "index", "metadata", "service", "web"},
    "desktop": {"base", "index", "service", "desktop"},
    "cli": {"base", "model", "index", "metadata", "service", "web", "desktop", "cli"},
    "testing": {"base", "model", "index", "metadata", "service", "web", "desktop", "cli", "testing"},
}


def module_name(path: Path) -> str:
    parts = ["daemon", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str:
    parts = module.split(".")
    if module == "daemon.__main__":
        return "cli"
    return parts[1] if len(parts) > 2 or module in {f"daemon.{k}" for k in ALLOWED} else "base"


def imports(module: str) -> set[str]:
    """The modules of ``daemon`` that *module* imports anywhere in its body (lazy imports included)."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("daemon"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([base] if base else [])])
            if not base.startswith("daemon"):
                continue
            for alias in node.names:  # `from daemon.index import jobs` imports the module daemon.index.jobs
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    # A package's submodules run its __init__ first: that is Python's order, not an arrow of ours.
    return {m for m in found if m in MODULES and not module.startswith(m + ".") and m != module}


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_is_in_a_known_layer() -> None:
    assert {layer(m) for m in MODULES} <= set(ALLOWED)
    tops = sorted(p.name for p in PACKAGE.iterdir() if not p.name.startswith("__pycache__"))
    assert {"cli", "desktop", "index", "metadata", "model", "service", "web"} <= set(tops)


def upward(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a layer that its layer may not make."""
    return sorted(f"{v} -> {w}" for v in graph for w in graph[v] if layer(w) not in ALLOWED[layer(v)])


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module: the import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_imports_run_one_way() -> None:
    """Interfaces -> service -> metadata -> index, and model -> base; never upward, never model <-> index."""
    assert upward(GRAPH) == []


def test_no_import_circle() -> None:
    assert circles(GRAPH) == []


def test_the_checks_see_a_planted_circle_and_upward_import() -> None:
    """The two checks above can fail: the index importing the runner is both."""
    planted = {**GRAPH, "daemon.index.records": GRAPH["daemon.index.records"] | {"daemon.service.runner"}}
    assert upward(planted) == ["daemon.index.records -> daemon.service.runner"]
    circle = next(c for c in circles(planted) if "daemon.index.records" in c)
    assert "daemon.service.runner" in circle
    # model <-> index is sideways, and not allowed either way
    sideways = {**GRAPH, "daemon.model.embed": GRAPH["daemon.model.embed"] | {"daemon.index.db"}}
    assert upward(sideways) == ["daemon.model.embed -> daemon.index.db"]


def oversized() -> list[str]:
    found = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            limit = (
                MAX_CLASS_LINES
                if isinstance(node, ast.ClassDef)
                else MAX_FUNCTION_LINES
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                else None
            )
            if limit is not None and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{module}.{node.name}: {lines} lines (limit {limit})")
    return sorted(found)


def test_no_class_over_150_lines_and_no_function_over_50() -> None:
    assert oversized() == []


def test_the_command_line_and_its_help_import_no_model_library() -> None:
    """``import daemon.cli`` and ``--help`` stay light: torch and transformers load in the commands that run them."""
    probe = (
        "import sys, contextlib, io\n"
        "import daemon.cli\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    daemon.cli.main(['--help'])\n"
        "for name in ('search', 'status', 'doctor', 'find', 'ask'):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        daemon.cli.main([name, '--help'])\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'numpy'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
