"""``python -m lightning_shortcut.study``: the same as ``shortcut-study``."""

from lightning_shortcut.study.cli import main

main()
