"""Progress bars: widgets in JupyterLab, plain text where text is read (a terminal, a log, ``make reproduce``).

``tqdm.auto`` draws a widget in a notebook kernel (ipywidgets is in the environment, so no "IProgress not found"
warning). A notebook executed by papermill for ``make reproduce`` should stream its progress to the terminal
instead: there ``ISAE_PROGRESS=text`` selects tqdm's text bar written to stdout, which ``papermill --log-output``
prints and the executed notebook keeps as ordinary output (not as a red stderr box).
"""

from __future__ import annotations

import os
import sys

ENV = "ISAE_PROGRESS"
"""The environment variable that chooses the bar: "text" for text on stdout; unset (or "auto"): ``tqdm.auto``."""


def progress_bar(*args, **kwargs):
    """A tqdm bar (same arguments as ``tqdm.tqdm``), the kind chosen by ``ISAE_PROGRESS``."""
    mode = os.environ.get(ENV, "auto")
    if mode == "text":
        from tqdm.std import tqdm

        kwargs.setdefault("file", sys.stdout)
        return tqdm(*args, **kwargs)
    if mode != "auto":
        raise ValueError(f"{ENV}={mode!r}: use 'text' (text on stdout) or 'auto' (widgets in a notebook).")
    from tqdm.auto import tqdm

    return tqdm(*args, **kwargs)
