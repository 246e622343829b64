"""The docs site builds strictly (every warning an error) and shows what its pages promise: the
examples' code, and an API reference generated from the docstrings that names no private module."""

import html
import inspect
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_shortcut.callbacks import HessianEigenvalueMonitor
from lightning_shortcut.hessian import SpectrumTracker
from lightning_shortcut.hessian.tracking import DEFAULT_AUDIT_EVERY

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
API_PAGES = [
    "index.html",
    "hessian/index.html",
    "callbacks/index.html",
    "models/index.html",
    "study/index.html",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip(
        "mkdocstrings_handlers.python",
        reason="the docs extra is not installed: pip install -e '.[docs]' to build the docs site",
    )
    pytest.importorskip("material", reason="the docs extra is not installed (mkdocs-material)")
    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return site


def text_of(markup: str) -> str:
    """What a reader sees of some HTML: the text without its tags."""
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def code_blocks(page: str) -> list[str]:
    """The text of each highlighted code block of a page (not the signatures)."""
    blocks = re.findall(
        r'<div class="(?:language-\w+ )?highlight"><pre>(.*?)</pre></div>', page, re.S
    )
    return [text_of(block) for block in blocks]


def test_docs_build_strictly_with_the_api_reference(site):
    api = site / "api"
    # the reference holds what a user calls, generated from the docstrings
    for page, anchor in [
        ("index.html", "lightning_shortcut.ResidualStack"),
        ("hessian/index.html", "lightning_shortcut.hessian.hessian_eigenvalues"),
        ("callbacks/index.html", "lightning_shortcut.callbacks.HessianEigenvalueMonitor"),
        ("models/index.html", "lightning_shortcut.models.ResidualClassifier"),
        ("study/index.html", "lightning_shortcut.study.StudyConfig"),
    ]:
        assert f'id="{anchor}"' in (api / page).read_text(), (page, anchor)
    # Sphinx roles in docstrings become links, not ':func:' text
    for page in api.rglob("*.html"):
        assert not re.search(r":(func|class|meth|attr|mod|data|exc|obj):<", page.read_text()), page


def test_examples_page_shows_each_script(site):
    page = (site / "examples" / "index.html").read_text()
    assert "--8" not in text_of(page), "a snippet marker was not replaced by the file"
    blocks = [block.strip() for block in code_blocks(page)]
    assert EXAMPLES
    for script in EXAMPLES:
        source = script.read_text().strip()
        assert source in blocks, f"examples/{script.name} is not shown whole on the Examples page"


def test_api_pages_show_default_values_not_constant_names(site):
    for name in API_PAGES:
        page = (site / "api" / name).read_text()
        assert not re.search(r"=\s*DEFAULT_\w+", text_of(page)), name  # in a signature
        assert not re.search(r"<td>\s*<code>(?:<[^>]*>)*DEFAULT_\w+", page), name  # a Default cell
    # the value shown is the constant's
    text = text_of((site / "api" / "hessian" / "index.html").read_text())
    assert f"audit_every: int = {DEFAULT_AUDIT_EVERY}" in text


def test_api_pages_name_no_private_module(site):
    package = ROOT / "lightning_shortcut"
    private_modules = {
        path.stem if path.is_file() else path.name
        for path in package.rglob("_*")
        if not path.name.startswith("__") and (path.suffix == ".py" or path.is_dir())
    }
    assert "_stopping" in private_modules
    for name in API_PAGES:
        page = (site / "api" / name).read_text()
        # a link or a tooltip naming a private module, or text naming one, such as ``_stopping``
        paths = re.findall(r"lightning_shortcut(?:\.\w+)*\._[a-z]\w*", page)
        assert not paths, (name, sorted(set(paths)))
        text = text_of(page)
        named = [module for module in private_modules if re.search(rf"(?<![\w.]){module}\b", text)]
        assert not named, (name, named)


def test_api_examples_render_as_code(site):
    for name in API_PAGES:
        page = (site / "api" / name).read_text()
        assert "Example::" not in text_of(page), name
        # a docstring's ``Example:`` section is a box holding highlighted code
        for example in re.findall(r'<details class="example".*?</details>', page, re.S):
            assert '<div class="highlight">' in example, (name, text_of(example)[:200])
    monitor = code_blocks((site / "api" / "callbacks" / "index.html").read_text())
    assert any("HessianEigenvalueMonitor(every_n_steps=100)" in block for block in monitor)
    tracker = code_blocks((site / "api" / "hessian" / "index.html").read_text())
    assert any("tracker.update(spectrum, params)" in block for block in tracker)


def test_audit_every_default_is_the_constant():
    default = inspect.signature(SpectrumTracker.__init__).parameters["audit_every"].default
    assert default == DEFAULT_AUDIT_EVERY
    assert HessianEigenvalueMonitor(warm_start=True).audit_every == DEFAULT_AUDIT_EVERY


def test_ruff_format_leaves_the_docs_pages_alone():
    """`ruff format` formats Python code blocks in Markdown and would break the snippet markers
    (``--8<-- "examples/..."`` becomes ``--8 < --"examples/..."``)."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (the dev extra)")
    for paths in [["docs"], ["docs/examples.md"]]:  # found in a folder, or named
        result = subprocess.run(
            [ruff, "format", "--diff", *paths], cwd=ROOT, capture_output=True, text=True
        )
        assert ".md" not in result.stdout + result.stderr, result.stdout[-2000:]
