"""The docs site builds strictly (every warning an error) and its API reference is generated."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip(
    "mkdocstrings_handlers.python",
    reason="the docs extra is not installed: pip install -e '.[docs]' to build the docs site",
)
pytest.importorskip("material", reason="the docs extra is not installed (mkdocs-material)")


def test_docs_build_strictly_with_the_api_reference(tmp_path):
    site = tmp_path / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
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
