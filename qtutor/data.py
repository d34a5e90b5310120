"""The course corpora and a seeded calibration sampler.

* evaluation: WikiText-2 raw test (``data/wikitext-2-raw-test.txt``), never
  used for calibration;
* calibration domains: WikiText-2 validation (in-domain; its ``<unk>`` markers
  are dropped, because deployed text never holds them), Tiny Shakespeare
  (out-of-domain prose), and Python source code: 21 modules of CPython
  3.11.7's standard library, concatenated once into
  ``data/python-stdlib-3.11.7.txt`` (provenance in ``data/README.md``), so that
  the code-domain numbers do not depend on the interpreter that runs them.

Each calibration corpus is split once: the first 90 % of its tokens are the
calibration pool, the last 10 % a held-out slice for in-domain evaluation.
"""
from __future__ import annotations

import enum
import hashlib
import os
from pathlib import Path

import torch

__all__ = [
    "Corpus",
    "data_dir",
    "load_text",
    "eval_text",
    "tokenize_corpus",
    "calibration_samples",
    "verify_checksums",
]

_EVAL_FILE = "wikitext-2-raw-test.txt"
_HELDOUT_FRACTION = 0.1
# The code corpus: these CPython 3.11.7 standard-library modules, in this order, joined by blank lines
# (data/README.md says how the file was made; _code_text_from_stdlib rebuilds it from an interpreter)
_CODE_MODULES = (
    "argparse.py", "ast.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "contextlib.py", "dataclasses.py", "difflib.py", "enum.py", "fractions.py",
    "functools.py", "heapq.py", "inspect.py", "json/decoder.py", "json/encoder.py",
    "shutil.py", "statistics.py", "string.py", "tempfile.py", "textwrap.py", "typing.py",
)


class Corpus(enum.Enum):
    """Calibration domains."""

    WIKITEXT = "wikitext-2-valid-tokens.txt"
    SHAKESPEARE = "tinyshakespeare.txt"
    CODE = "python-stdlib-3.11.7.txt"


def data_dir() -> Path:
    """The repository's ``data/`` folder, or ``$QTUTOR_DATA``."""
    env = os.environ.get("QTUTOR_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1] / "data"
    if not (path / _EVAL_FILE).is_file():
        raise FileNotFoundError(
            f"qtutor's corpora are not in {path}: run from a clone of the course repository "
            "(pip install -e .) or set QTUTOR_DATA to the folder that holds them"
        )
    return path


def verify_checksums(root: Path | None = None) -> dict[str, bool]:
    """``{file: matches}`` for every line of ``SHA256SUMS`` in ``root`` (default: :func:`data_dir`).

    A line is ``<64 hex digits> <name>`` (``sha256sum``'s format, ``*name`` for binary
    mode allowed). Names are read from a file, so each must stay inside ``root``: an
    absolute path, a ``..`` that climbs out, or a link that points out is refused with
    the line number, before any file is read.
    """
    root = data_dir() if root is None else Path(root)
    listing = root / "SHA256SUMS"
    base = root.resolve()
    entries = []
    for number, line in enumerate(listing.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(maxsplit=1)
        digest = parts[0].lower()
        if len(parts) != 2 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{listing}, line {number}: {line!r} is not '<64 hex digits> <file name>'")
        name = parts[1].strip().removeprefix("*")
        target = (root / name).resolve()
        if Path(name).is_absolute() or not target.is_relative_to(base):
            raise ValueError(f"{listing}, line {number}: {name!r} is outside {root}; a checksum list may only "
                             "name files inside its own folder")
        entries.append((name, digest, target))
    return {name: hashlib.sha256(target.read_bytes()).hexdigest() == digest for name, digest, target in entries}


def _code_text_from_stdlib(stdlib: Path) -> str:
    """The code corpus rebuilt from a standard-library folder (how ``data/python-stdlib-3.11.7.txt`` was made)."""
    return "\n\n".join((stdlib / m).read_text(encoding="utf-8") for m in _CODE_MODULES)


def load_text(corpus: Corpus) -> str:
    """The whole text of a calibration corpus."""
    if not isinstance(corpus, Corpus):
        raise ValueError(f"corpus={corpus!r}: must be one of {[c.name for c in Corpus]}")
    text = (data_dir() / corpus.value).read_text(encoding="utf-8")
    if corpus is Corpus.WIKITEXT:
        text = text.replace(" <unk>", "")
    return text


def eval_text() -> str:
    """WikiText-2 raw test: the evaluation text."""
    return (data_dir() / _EVAL_FILE).read_text(encoding="utf-8")


_TOKEN_CACHE: dict[tuple, torch.Tensor] = {}


def tokenize_corpus(tokenizer, corpus: Corpus | str) -> torch.Tensor:
    """1-D int64 token ids of a corpus (``"eval"`` for the evaluation text), cached per tokenizer.

    No BOS token is added: windows are cut from one long stream.
    """
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), corpus)
    if key not in _TOKEN_CACHE:
        text = eval_text() if corpus == "eval" else load_text(corpus)
        ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        _TOKEN_CACHE[key] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[key]


def calibration_samples(
    tokenizer,
    corpus: Corpus = Corpus.WIKITEXT,
    n_samples: int = 128,
    seq_len: int = 512,
    seed: int = 0,
    heldout: bool = False,
) -> torch.Tensor:
    """``n_samples`` random windows of ``seq_len`` tokens: int64 ``(n_samples, seq_len)``.

    Start positions are drawn uniformly with a ``torch.Generator`` seeded by
    ``seed``, as GPTQ's ``get_wikitext2`` does.  ``heldout=True`` draws from the
    last 10 % of the corpus instead of the first 90 %.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples={n_samples}: a calibration set needs at least one sample")
    if seq_len < 2:
        raise ValueError(f"seq_len={seq_len}: must be at least 2")
    ids = tokenize_corpus(tokenizer, corpus)
    cut = int(len(ids) * (1 - _HELDOUT_FRACTION))
    pool = ids[cut:] if heldout else ids[:cut]
    if len(pool) <= seq_len:
        raise ValueError(
            f"seq_len={seq_len} is longer than the {'held-out' if heldout else 'calibration'} "
            f"pool of {corpus.name} ({len(pool)} tokens)"
        )
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(pool) - seq_len, (n_samples,), generator=gen)
    return torch.stack([pool[s : s + seq_len] for s in starts.tolist()])
