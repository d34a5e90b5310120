"""Progress for every step longer than a few seconds: a tqdm bar (a widget in JupyterLab, text elsewhere).

The bar is transient (``leave=False``): it shows while the step runs and then
disappears, so a notebook's saved output holds no timing text. nbval does not
compare the widget's view, and ``tests/nbval_sanitize.cfg`` masks the bar's text form.
``QTUTOR_PROGRESS=0`` turns every bar off.
"""
from __future__ import annotations

import os
from collections.abc import Iterable

__all__ = ["progress"]


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True):
    """Iterate over ``iterable`` with a progress bar labelled ``desc`` (or silently when not ``enabled``)."""
    if not enabled or os.environ.get("QTUTOR_PROGRESS", "1") == "0":
        return iterable
    import tqdm as _tqdm
    from tqdm.auto import tqdm

    # qtutor.course.setup_notebook silences every other tqdm bar (loaders print rates); _qtutor lets this one through
    extra = {"_qtutor": True} if getattr(_tqdm.std.tqdm, "_qtutor_quiet", False) else {}
    return tqdm(iterable, desc=desc, total=total, unit=unit, leave=False, dynamic_ncols=True, **extra)
