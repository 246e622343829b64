"""The README is a front page that stays true: its Quickstart is what CI runs, its code runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, re.S)


def test_the_quickstart_test_command_is_what_ci_runs():
    quickstart = _blocks("bash")[0].strip().splitlines()
    assert len(quickstart) == 2
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert quickstart[1] == ci[-1]


def test_the_front_page_stays_short():
    assert len(README.splitlines()) <= 160  # reference material lives on the docs site


def test_front_page_shows_the_monitor_first():
    lines = README.splitlines()
    first = "\n".join(lines[:60])
    assert "HessianEigenvalueMonitor(" in first and "ResidualInit(" in first
    assert "hessian/max_eigenvalue" in first and "hessian/stability" in first


def test_relative_links_and_images_exist():
    targets = re.findall(r"\]\(((?!https?://)[^)#]+)", README)
    assert targets
    for target in targets:
        assert (ROOT / target).exists(), target


def test_python_blocks_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the Trainer writes lightning_logs/ here
    namespace: dict = {}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)
    history = namespace["monitor"].history
    assert [record["step"] for record in history] == [0, 20, 40]
    # near the paper's zero point (n = 2, small weights) the residual Hessian is symmetric
    first = history[0]
    assert first["max_eigenvalue"] > 0
    assert abs(first["max_eigenvalue"] + first["min_eigenvalue"]) < 0.05 * first["max_eigenvalue"]
    assert namespace["report"].stability > 0
    assert len(namespace["params"]) == 2 * 32  # two weight layers per unit, no biases
