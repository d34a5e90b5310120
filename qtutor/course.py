"""Notebook set-up shared by every lesson: seeds, threads, quiet logs, plot style."""
from __future__ import annotations

import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch

__all__ = ["setup_notebook", "save_notebook_results", "load_notebook_results"]


def setup_notebook(seed: int = 0, threads: int | None = 2) -> None:
    """Seed every generator, fix the thread count and silence run-to-run noise.

    A fixed thread count keeps float reductions in the same order, so that the
    numbers the notebooks print are the same on every run of the same machine
    kind (nbval compares them in CI).
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if threads is not None:
        torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # progress bars (transformers' and compressed-tensors' loaders) print rates that differ run to
    # run, and nbval compares every output; some callers pass disable=False explicitly, so force it
    import tqdm

    if not getattr(tqdm.std.tqdm, "_qtutor_quiet", False):
        loud_init = tqdm.std.tqdm.__init__

        def quiet_init(self, *args, **kwargs):
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


def save_notebook_results(name: str, rows: list[dict]) -> Path:
    """Keep a notebook's computed table for a later notebook (``<cache>/notebook-results/<name>.json``)."""
    import datetime
    import json
    import platform

    from .model.loading import cache_dir

    path = cache_dir() / "notebook-results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"computed_by": name, "date": datetime.date.today().isoformat(), "machine": platform.machine(),
              "rows": rows}
    path.write_text(json.dumps(record, indent=2))
    return path


def load_notebook_results(name: str) -> dict | None:
    """The table ``save_notebook_results(name, …)`` kept, or None if that notebook has not been run here."""
    import json

    from .model.loading import cache_dir

    path = cache_dir() / "notebook-results" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None
