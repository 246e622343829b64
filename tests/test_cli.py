"""``lightning-shortcut``'s own commands: the recipe listing (what it says, what it imports)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_shortcut.cli import main
from lightning_shortcut.init import ZeroInit
from lightning_shortcut.recipes import (
    EXACT_ZERO_INITS,
    INITS,
    all_recipes,
    recipe_name,
    recipe_text,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "recipes.md"
SADDLE = "saddle"


def _is_saddle(shortcut_depth, init):
    """The exact zero point with two or more layers per branch: every branch gradient is zero."""
    strategy, arguments = INITS[init]
    return strategy is ZeroInit and arguments.get("scale") == 0.0 and shortcut_depth >= 2


def test_exact_zero_inits_are_the_zero_scale_ones():
    assert set(EXACT_ZERO_INITS) == {
        name
        for name, (strategy, args) in INITS.items()
        if strategy is ZeroInit and not args["scale"]
    }


@pytest.mark.parametrize("spec", all_recipes(), ids=lambda spec: recipe_name(*spec))
def test_recipe_comment_says_whether_the_branches_can_train(spec):
    dataset, depth, init, activation = spec
    comment = "\n".join(
        line for line in recipe_text(*spec).splitlines() if line.startswith("#")
    ).lower()
    if _is_saddle(depth, init):
        assert SADDLE in comment and "zero gradient" in comment
        assert f"{dataset}/shortcut{depth}_small_{activation}" in comment  # what to train instead
    else:
        assert SADDLE not in comment and "zero gradient" not in comment


def test_listing_marks_the_saddle_recipes_and_only_them(capsys):
    main(["recipes"])
    out = capsys.readouterr().out
    marked = {}
    for line in out.splitlines():
        match = re.fullmatch(r"(\w+/shortcut(\d)_(\w+?)_(linear|relu))(\s+.*)?", line)
        if match:
            marked[match.group(1)] = bool(match.group(5) and SADDLE in match.group(5))
    names = {recipe_name(*spec): spec for spec in all_recipes()}
    assert set(marked) == set(names)  # one line per recipe, the name first
    for name, (_, depth, init, _) in names.items():
        assert marked[name] == _is_saddle(depth, init), name
    legend = [line for line in out.splitlines() if line not in marked and SADDLE in line.lower()]
    assert legend and "zero gradient" in " ".join(legend).lower()  # the tag is explained


def test_docs_say_what_the_exact_zero_recipes_are_for():
    text = " ".join(DOCS.read_text().split()).lower()
    assert "zero gradient" in text and SADDLE in text and "shortcut depth >= 2" in text


def test_listing_imports_no_torch():
    code = (
        "import lightning_shortcut.cli, sys; lightning_shortcut.cli.main(['recipes']); "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)[:5]"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "digits/shortcut2_small_relu" in result.stdout


def test_package_keeps_its_public_names():
    import lightning_shortcut

    for name in lightning_shortcut.__all__:
        assert getattr(lightning_shortcut, name) is not None, name
    assert set(lightning_shortcut.__all__) <= set(dir(lightning_shortcut))
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = lightning_shortcut.no_such_name
