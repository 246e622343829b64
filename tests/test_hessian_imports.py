"""``lightning_shortcut.hessian`` is plain PyTorch: it imports nothing from the rest of the package."""

import ast
import subprocess
import sys
from pathlib import Path

import lightning_shortcut.hessian

ENGINE = Path(lightning_shortcut.hessian.__file__).parent


def _imported_modules(path: Path) -> list[str]:
    """Every module ``path`` imports, top level or inside functions, relative imports resolved."""
    package = ".".join(path.relative_to(ENGINE.parent.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_the_engine_imports_only_itself_from_the_package():
    files = sorted(ENGINE.rglob("*.py"))
    assert len(files) > 10
    outside = {
        f"{path.relative_to(ENGINE)}: {name}"
        for path in files
        for name in _imported_modules(path)
        if name.split(".")[0] == "lightning_shortcut"
        and not name.startswith("lightning_shortcut.hessian")
    }
    assert not outside


def test_importing_the_engine_loads_no_other_module_of_the_package():
    code = (
        "import sys, lightning_shortcut.hessian; "
        "print(sorted(m for m in sys.modules if m.startswith('lightning_shortcut')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    loaded = eval(result.stdout)  # a printed list of module names
    assert "lightning_shortcut.hessian.spectrum" in loaded
    assert [m for m in loaded if not m.startswith("lightning_shortcut.hessian")] == [
        "lightning_shortcut"
    ]


def _module_of(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` (``module -> modules it imports``) as a path, or ``None``."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once every edge is explored

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target, [*path, target])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [module])):
            return cycle
    return None


def test_no_two_modules_of_the_engine_import_each_other_even_around_a_loop():
    # every import counts: at the top, inside a function or under TYPE_CHECKING; `from a.b import
    # c` imports `a.b` (a package's __init__ included) and, where it is one, the module `a.b.c`
    modules = {_module_of(path): path for path in ENGINE.rglob("*.py")}
    graph = {
        module: {name for name in _imported_modules(path) if name in modules} - {module}
        for module, path in modules.items()
    }
    assert _import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None
    assert _import_cycle(graph) is None
