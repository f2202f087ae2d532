"""The code's shape: no import cycles among the application's and the adapters' modules."""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("handler", "adapters")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_at_load(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports when it loads (not under `TYPE_CHECKING`, not inside functions)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        for inner in ast.walk(node):
            if isinstance(inner, ast.ImportFrom) and inner.module and inner.level == 0:
                candidates = [inner.module, *(f"{inner.module}.{alias.name}" for alias in inner.names)]
            elif isinstance(inner, ast.Import):
                candidates = [alias.name for alias in inner.names]
            else:
                continue
            found |= {name for name in candidates if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [path for package in PACKAGES for path in (ROOT / package).rglob("*.py")]
    names = {module_name(path): path for path in paths}
    known = set(names)
    return {name: imports_at_load(path, known) - {name} for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_sees_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


# --- rooms -------------------------------------------------------------------------------------------------
# `handler/` is the core (contracts, internal form, errors, config) and rooms (sub-packages); the core's and each
# room's `__init__` docstring ends with "May import: ..." naming what its modules may import besides their own room.


def room_of(module: str) -> str:
    """`handler` for the core, `handler.<room>` for a room's modules; any other module is its own room."""
    parts = module.split(".")
    if parts[0] != "handler":
        return module
    return ".".join(parts[:2]) if len(parts) > 1 and ROOT.joinpath(*parts[:2]).is_dir() else "handler"


def allowed_imports(room: str) -> list[str]:
    """What a room's docstring allows: `handler` (the core), rooms, adapters packages; `*` for anything."""
    init = ROOT.joinpath(*room.split("."), "__init__.py")
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "May import:" in doc, f"{init} must say what its modules may import"
    said = " ".join(doc.split("May import:", 1)[1].split())
    if said.startswith("anything"):
        return ["*"]
    names = (entry.strip().split(" ")[0].rstrip(".") for entry in said.replace(";", ",").split(","))
    return [room, *(name for name in names if name.startswith(("handler", "adapters")))]


def imports_anywhere(source: str) -> set[str]:
    """Every project module `source` imports: at load, inside a function, or for annotations only."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in PACKAGES}


def permitted(target: str, allowed: list[str]) -> bool:
    if "*" in allowed:
        return True
    room = room_of(target)
    return any(room == prefix or (prefix.startswith("adapters") and room.startswith(prefix)) for prefix in allowed)


def trespasses(extra: dict[str, str] | None = None) -> list[str]:
    """Each import of a handler module that its room's docstring does not allow (`extra`: lines added to
    modules, for the test that the check works)."""
    found = []
    for path in sorted((ROOT / "handler").rglob("*.py")):
        module = module_name(path)
        allowed = allowed_imports(room_of(module))
        source = path.read_text() + (extra or {}).get(module, "")
        found += [
            f"{module} imports {target}"
            for target in sorted(imports_anywhere(source))
            if not permitted(target, allowed)
        ]
    return found


def test_every_room_imports_only_what_its_opening_says() -> None:
    assert trespasses() == []


def test_handler_is_a_core_and_rooms() -> None:
    rooms = sorted(path.parent.name for path in (ROOT / "handler").glob("*/__init__.py"))
    assert rooms == ["api", "dashboard", "entry", "pipeline", "telemetry"]
    core = sorted(path.stem for path in (ROOT / "handler").glob("*.py") if path.stem != "__init__")
    assert core == [
        "call_ids",
        "chunks",
        "config",
        "embeddings",
        "errors",
        "otlp_config",
        "ports",
        "records",
        "redaction",
        "schemas",
        "wire",
    ]


def test_the_room_check_sees_a_trespass() -> None:
    added = {
        "handler.telemetry.observability": "\nfrom handler.api import app\n",
        "handler.ports": "\ndef late() -> None:\n    import handler.pipeline.budgets\n",
        "handler.dashboard.reports": "\nfrom adapters.store import open_store\n",
        "handler.dashboard.routes": "\nif TYPE_CHECKING:\n    from handler.api.app import Api\n",
    }
    assert trespasses(added) == [
        "handler.dashboard.reports imports adapters.store",
        "handler.dashboard.routes imports handler.api.app",
        "handler.ports imports handler.pipeline.budgets",
        "handler.telemetry.observability imports handler.api",
    ]


def test_every_data_file_of_the_application_ships_in_its_package() -> None:
    """A file beside the code (the default config, the price table, the dashboard's assets) is read at run
    time from the installed package: the package data globs must cover it."""
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    for path in sorted((ROOT / "handler").rglob("*")):
        if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
            continue
        owner = path.parent
        while not (owner / "__init__.py").exists():
            owner = owner.parent
        package = module_name(owner / "__init__.py")
        inside = path.relative_to(owner).as_posix()
        globs = package_data.get(package, [])
        assert any(fnmatch.fnmatch(inside, glob) for glob in globs), f"{path.relative_to(ROOT)} is not package data"
