"""A MkDocs hook: Sphinx cross-reference roles in docstrings become links.

The docstrings are written for any reader (``help()``, an IDE, Sphinx), so they cross-reference with
Sphinx roles such as ``:func:`~lightning_shortcut.hessian.hessian_eigenvalues```. mkdocstrings
renders those as the role's name followed by code; this hook turns each into an autorefs link
(optional: a name outside the reference stays code, without a warning), with ``~`` keeping only
the last component as the text, as Sphinx does.
"""

from __future__ import annotations

import re
from typing import Any

# a docstring may wrap a long name over two lines: whitespace inside the name is dropped
_ROLE = re.compile(r":(?:func|class|meth|attr|mod|data|exc|obj):<code>(~?)([\w.\s]+)</code>")


def _link(match: re.Match[str]) -> str:
    short, identifier = match.group(1), re.sub(r"\s+", "", match.group(2))
    text = identifier.rsplit(".", 1)[-1] if short else identifier
    return f'<autoref identifier="{identifier}" optional><code>{text}</code></autoref>'


def on_page_content(html: str, **kwargs: Any) -> str:
    return _ROLE.sub(_link, html)
