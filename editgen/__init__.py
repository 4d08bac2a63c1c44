"""editgen: training data for instruction-based image editing, under one import name.

The repository keeps its packages at the top (`pipeline/`, `stages/`, `prompts/`, `filters/`, `output/`,
`p2p/`, `llm/`, `sources/`, `tiny/`, `cli/`), and every one of them is imported as `editgen.<package>`.
An installed wheel holds them inside this package (pyproject.toml maps each folder to `editgen.<name>`),
so site-packages gains `editgen` alone. Run from a source checkout (tests, Ray workers with the checkout
on PYTHONPATH), the packages are found beside this folder: the checkout's root joins `__path__`.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_HERE)
if not os.path.isdir(os.path.join(_HERE, "pipeline")) and os.path.isfile(
        os.path.join(_ROOT, "pipeline", "__init__.py")):
    __path__.append(_ROOT)  # noqa: F821 - a package's __path__ exists at import
