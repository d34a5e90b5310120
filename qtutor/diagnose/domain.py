"""A calibration-distribution regression, measured live: calibrate on one corpus, score held-out text of each.

:func:`recalibration_table` quantizes copies of a model with GPTQ (or AWQ), each calibrated on one of the
course's corpora, and scores the float model and every copy by perplexity on held-out windows of every
corpus. A model calibrated on prose that is fine on prose and bad on code shows up as one row; the row
calibrated on code shows how much recalibrating recovers, and what it costs on prose.

``first_blocks`` limits the quantization to the first blocks (the rest stay float) so that the whole table
fits a notebook's time on two CPU cores; the effect is smaller than on the whole model, but of the same kind.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from ..config import AWQConfig, GPTQConfig
from ..data import Corpus, calibration_samples
from ..pipeline.awq import awq_quantize_model
from ..pipeline.gptq import gptq_quantize_model
from ..pipeline.sequential import InMemoryBlocks

__all__ = ["heldout_perplexity", "recalibration_table"]


@torch.no_grad()
def heldout_perplexity(model: nn.Module, tokenizer, corpus: Corpus, n_windows: int = 2, seq_len: int = 256,
                       seed: int = 123) -> float:
    """Perplexity on ``n_windows`` random windows from the last 10 % of ``corpus`` (never calibration text)."""
    ids = calibration_samples(tokenizer, corpus, n_samples=n_windows, seq_len=seq_len, seed=seed, heldout=True)
    ids = ids.to(next(model.parameters()).device)
    logits = model(ids, use_cache=False).logits[:, :-1].float()
    return math.exp(float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())))


def recalibration_table(model: nn.Module, tokenizer, config: GPTQConfig | AWQConfig = GPTQConfig(3, 128),
                        calibrate_on: Sequence[Corpus] = (Corpus.WIKITEXT, Corpus.CODE),
                        score_on: Sequence[Corpus] = (Corpus.WIKITEXT, Corpus.CODE), first_blocks: int | None = None,
                        calib: tuple[int, int] = (4, 256), heldout: tuple[int, int] = (2, 256), seed: int = 0,
                        progress: bool = False) -> pd.DataFrame:
    """Held-out perplexity per corpus of the float model and of one quantized copy per calibration corpus.

    Rows: ``"float"``, then ``"calibrated on WIKITEXT"`` …; columns: one per ``score_on`` corpus (its name in
    lower case). ``calib`` and ``heldout`` are ``(n_windows, seq_len)``; ``model`` itself is never changed.
    """
    if not isinstance(config, (GPTQConfig, AWQConfig)):
        raise ValueError(f"config must be a GPTQConfig or an AWQConfig, got {type(config).__name__}")
    n_blocks = len(model.model.layers)
    if first_blocks is not None and (isinstance(first_blocks, bool) or not isinstance(first_blocks, int)
                                     or not 1 <= first_blocks <= n_blocks):
        raise ValueError(f"first_blocks={first_blocks!r}: must be None (all) or an integer from 1 to {n_blocks}")
    for name, seq in (("calibrate_on", calibrate_on), ("score_on", score_on)):
        bad = [c for c in seq if not isinstance(c, Corpus)]
        if not seq or bad:
            raise ValueError(f"{name} must be a non-empty sequence of qtutor.data.Corpus "
                             f"({', '.join(c.name for c in Corpus)}), got {list(seq)!r}")

    def scores(m: nn.Module) -> dict[str, float]:
        return {c.name.lower(): heldout_perplexity(m, tokenizer, c, *heldout) for c in score_on}

    rows = {"float": scores(model)}
    for corpus in calibrate_on:
        ids = calibration_samples(tokenizer, corpus, n_samples=calib[0], seq_len=calib[1], seed=seed)
        q = copy.deepcopy(model)
        blocks = InMemoryBlocks(q, next(q.parameters()).device)
        blocks.blocks = blocks.blocks[:first_blocks]  # the later blocks stay float
        quantize = gptq_quantize_model if isinstance(config, GPTQConfig) else awq_quantize_model
        quantize(q, ids, config, batch_size=calib[0], blocks=blocks, progress=progress)
        rows[f"calibrated on {corpus.name}"] = scores(q)
        del q
    return pd.DataFrame(rows).T.rename_axis("model")
