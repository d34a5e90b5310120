"""Notebook set-up shared by every lesson: seeds, threads, quiet logs, plot style; exercises and claims.

* :func:`exercise` marks a learner's function: while its body is still the stub
  (``raise NotImplementedError``), calls fall back to qtutor's own version with
  one printed line, so Run All reaches the end of every notebook.
* :func:`claim` backs a sentence of prose with a check: when the numbers above
  it change so that the sentence is no longer true, the notebook fails (nbval
  runs it in CI) instead of quietly saying something false.
"""
from __future__ import annotations

import functools
import os
import random
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["setup_notebook", "save_notebook_results", "load_notebook_results", "exercise", "claim", "ClaimFailed"]

_announced: set[str] = set()


def exercise(number: str, fallback: Callable) -> Callable[[Callable], Callable]:
    """Decorate the learner's function for exercise ``number``; ``fallback`` is qtutor's version.

    While the learner's body raises ``NotImplementedError`` (the stub of a learner
    copy), the decorated function prints once ``exercise N not done yet: using
    qtutor's version`` and returns ``fallback(*args, **kwargs)``. The checkers
    judge the learner's own function (``.learner_fn``), never the fallback.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NotImplementedError:
                if number not in _announced:
                    _announced.add(number)
                    print(f"exercise {number} not done yet: using qtutor's version")
                return fallback(*args, **kwargs)

        run.exercise_number, run.learner_fn, run.fallback = number, fn, fallback
        return run

    return wrap


class ClaimFailed(AssertionError):
    """A sentence of the notebook's prose is contradicted by the numbers computed above it."""

    def _render_traceback_(self) -> list[str]:
        return [f"\x1b[31m✘ {self}\x1b[0m"]


def claim(condition, statement: str) -> None:
    """Check the prose ``statement`` against the computed numbers; print it if it holds, fail if not."""
    if not bool(condition):
        raise ClaimFailed(f"the text says “{statement}”, but the numbers computed above no longer support it")
    print(f"✔ {statement}")


def setup_notebook(seed: int = 0, threads: int | None = None) -> None:
    """Seed every generator, fix the thread count and silence run-to-run noise.

    A fixed thread count keeps float reductions in the same order, so that the
    numbers the notebooks print are the same on every run of the same machine
    kind (nbval compares them in CI).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is None:  # CI runs the notebooks under QTUTOR_THREADS=1 and compares with outputs made under 2
        threads = int(os.environ.get("QTUTOR_THREADS", "2"))
    torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # progress bars (transformers' and compressed-tensors' loaders) print rates that differ run to
    # run, and nbval compares every output; some callers pass disable=False explicitly, so force it
    import tqdm

    if not getattr(tqdm.std.tqdm, "_qtutor_quiet", False):
        loud_init = tqdm.std.tqdm.__init__

        def quiet_init(self, *args, _qtutor: bool = False, **kwargs):
            if not _qtutor:  # qtutor's own bars (qtutor.progress) stay: they show a long step is moving
                kwargs["disable"] = True
            loud_init(self, *args, **kwargs)

        tqdm.std.tqdm.__init__ = quiet_init
        tqdm.std.tqdm._qtutor_quiet = True
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    # bitsandbytes logs a machine-dependent warning at import on some CPUs (an optional hub kernel)
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    hf_logging.disable_progress_bar()
    import pandas as pd

    pd.set_option("display.precision", 4)
    # 4 significant digits: readable next to a perplexity of 10^6, and stable run to run
    pd.set_option("display.float_format", lambda v: f"{v:.4g}")
    pd.set_option("display.width", 120)
    import matplotlib

    matplotlib.rcParams.update({"figure.figsize": (7, 3.5), "figure.dpi": 90, "axes.grid": True})


_RESULT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _results_path(name: str) -> Path:
    """``<cache>/notebook-results/<name>.json``; a name that could leave that folder is refused."""
    from .model.loading import cache_dir

    if not isinstance(name, str) or not _RESULT_NAME.fullmatch(name) or ".." in name:
        raise ValueError(f"name={name!r}: use letters, digits, '_', '-' and '.' only (no path separators or '..'), "
                         "e.g. '07_gptq'")
    return cache_dir() / "notebook-results" / f"{name}.json"


def save_notebook_results(name: str, rows: list[dict]) -> Path:
    """Keep a notebook's computed table for a later notebook (``<cache>/notebook-results/<name>.json``)."""
    import datetime
    import json
    import platform

    path = _results_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"computed_by": name, "date": datetime.date.today().isoformat(), "machine": platform.machine(),
              "rows": rows}
    tmp = path.with_suffix(".json.tmp")  # written whole, then renamed: never a half-written file
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return path


def load_notebook_results(name: str) -> dict | None:
    """The table ``save_notebook_results(name, …)`` kept, or None if that notebook has not been run here."""
    import json

    path = _results_path(name)
    return json.loads(path.read_text()) if path.is_file() else None
