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
