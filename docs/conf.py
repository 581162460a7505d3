"""Sphinx configuration: Markdown pages (MyST), the furo theme, and a build where any warning is an
error (`nox -s docs` runs ``sphinx-build -W --keep-going``)."""

from __future__ import annotations

project = "vkpy"
author = "vkpy developers"
copyright = "vkpy developers"
release = "0.1.0"

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# Anchors for headings down to ###, so that `page.md#a-heading` links resolve (and are checked).
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence", "deflist"]

html_theme = "furo"
html_title = "vkpy"
# A code block without a language is shown plain: the pages hold shell sessions and file layouts as
# often as Python.
highlight_language = "none"


def setup(app: object) -> None:
    # The protocol spec marks its test vectors as ```hex (its tests find them by that tag); show
    # them as plain text rather than warn about an unknown lexer.
    from pygments.lexers.special import TextLexer
    from sphinx.highlighting import lexers

    lexers["hex"] = TextLexer()
