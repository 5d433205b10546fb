"""Sphinx configuration: MyST Markdown pages, the generated pages (`_ext/generate.py`:
methods, metrics and results from the registry and the committed runs). Build with
`python -m sphinx -W -b html docs docs/_build/html` (warnings are errors)."""

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))
sys.path.insert(0, str(DOCS / "_ext"))

import unlearn_jax  # noqa: E402

project = "unlearn_jax"
author = "the unlearn_jax developers"
release = version = unlearn_jax.__version__
extensions = ["myst_parser", "generate"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "results/*/*.md", "results/**/README.md"]
# The JAX ecosystem's theme (optax's and flax's documentation use it): a sidebar, wide
# code blocks that scroll, tables that scroll inside their column.
html_theme = "sphinx_book_theme"
html_title = f"unlearn_jax {release}"
html_theme_options = {"show_toc_level": 2, "home_page_in_toc": True}
html_static_path = ["_static"]
html_css_files = ["custom.css"]
nitpicky = False
