"""llama.cpp's reference quantizers, compiled from the source package the notebooks cite.

The ``llama_cpp_ref`` fixture gives ``quantize(x, name)``: llama.cpp's own
``quantize_row_<type>_ref`` over float32 blocks, and ``quantize_weighted(x, imatrix, name)``:
its ``quantize_<type>`` with an importance matrix, through ``harness/kquant_ref.c``
compiled with ``vendor/llama.cpp/ggml/src/ggml-quants.c`` of llama-cpp-python 0.3.36.

Where the source package comes from, in order:

1. ``$QTUTOR_LLAMA_CPP_SDIST``: a path to ``llama_cpp_python-0.3.36.tar.gz``;
2. the cache: ``<qtutor cache>/llama_cpp_python-0.3.36.tar.gz`` (``$QTUTOR_CACHE`` or ``~/.cache/qtutor``);
3. ``pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36`` into that cache,
   once. It is the project's published *source* package (C/C++ and Python code, about
   80 MB), not a model or a data set; only five headers and ``ggml-quants.c`` are read.

Its SHA-256 is checked. The shared library is built once per source package, harness and
flags (``<qtutor cache>/llama_cpp_ref/<key>/``), so later sessions only load it.
Without the package (no network) or without a C compiler the tests fail with the
reason under CI (``CI=true``) and are skipped elsewhere.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest

LLAMA_CPP_PYTHON = "0.3.36"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
HARNESS = Path(__file__).resolve().parent / "harness" / "kquant_ref.c"
GGML = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/ggml/"
SOURCES = [  # what ggml-quants.c includes, directly or not
    "include/ggml.h", "include/ggml-cpu.h", "include/ggml-backend.h", "include/ggml-alloc.h", "include/gguf.h",
    "src/ggml-common.h", "src/ggml-impl.h", "src/ggml-quants.h", "src/ggml-quants.c", "src/ggml-cpu/ggml-cpu-impl.h",
]
# -ffp-contract=off: no fused multiply-add anywhere, as numpy computes (see harness/kquant_ref.c)
CFLAGS = ["-O2", "-std=c11", "-ffp-contract=off", "-fPIC", "-shared"]
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")


class Unavailable(Exception):
    """The reference cannot be built here (no source package, no compiler)."""


def _cache() -> Path:
    from qtutor.model import cache_dir

    return cache_dir()


def _sha256(path: Path) -> str:
    from qtutor.model.loading import _sha256 as file_sha256  # the model cache's streaming hash

    return file_sha256(path)


def _sdist() -> Path:
    if "QTUTOR_LLAMA_CPP_SDIST" in os.environ:
        path = Path(os.environ["QTUTOR_LLAMA_CPP_SDIST"])
        if not path.is_file():
            raise Unavailable(f"QTUTOR_LLAMA_CPP_SDIST={path}: no such file")
    else:
        path = _cache() / SDIST_NAME
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
                cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp]
                run = subprocess.run(cmd, capture_output=True, text=True)
                got = Path(tmp) / SDIST_NAME
                if run.returncode != 0 or not got.is_file():
                    raise Unavailable(f"could not download the llama.cpp source package ({' '.join(cmd)}): "
                                      f"{run.stderr.strip().splitlines()[-1:] or run.returncode}; "
                                      f"or set QTUTOR_LLAMA_CPP_SDIST to a copy of {SDIST_NAME}")
                got.replace(path)
    digest = _sha256(path)
    if digest != SDIST_SHA256:
        raise Unavailable(f"{path}: SHA-256 {digest}, expected {SDIST_SHA256} ({SDIST_NAME} from PyPI)")
    return path


def _build(sdist: Path) -> Path:
    cc = shutil.which(os.environ.get("CC", "cc"))
    if cc is None:
        raise Unavailable("no C compiler (cc) to build llama.cpp's reference quantizers")
    key = hashlib.sha256((SDIST_SHA256 + HARNESS.read_text() + " ".join(CFLAGS)).encode()).hexdigest()[:16]
    lib = _cache() / "llama_cpp_ref" / key / "libkquant_ref.so"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        src = Path(tmp)
        with tarfile.open(sdist) as tar:
            for name in SOURCES:
                target = src / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(GGML + name).read())
        out = src / "libkquant_ref.so"
        cmd = [cc, *CFLAGS, f"-I{src / 'include'}", f"-I{src / 'src'}", str(HARNESS), str(src / "src/ggml-quants.c"),
               "-o", str(out), "-lm"]
        run = subprocess.run(cmd, capture_output=True, text=True)
        if run.returncode != 0:
            # the sources are pinned by hash, so a failure here is the harness's or the compiler's
            pytest.fail(f"building llama.cpp's reference quantizers failed:\n{' '.join(cmd)}\n{run.stderr}")
        out.replace(lib)  # atomic: a concurrent session sees the whole library or none
    return lib


class LlamaCppReference:
    """llama.cpp's ``quantize_row_<type>_ref`` for the legacy and k-quant types."""

    def __init__(self, lib: Path) -> None:
        self.lib = ctypes.CDLL(str(lib))
        self.lib.qtutor_block_size.restype = ctypes.c_size_t
        self.lib.qtutor_block_size.argtypes = [ctypes.c_char_p]

    def block_size(self, name: str) -> int:
        """Bytes of one block of ``name`` in llama.cpp's structs."""
        return int(self.lib.qtutor_block_size(name.encode()))

    def quantize(self, x: np.ndarray, name: str) -> np.ndarray:
        """(n_blocks, block length) float32 -> (n_blocks, block size) uint8, as llama.cpp writes them."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros((x.shape[0], self.block_size(name)), dtype=np.uint8)
        fn = getattr(self.lib, f"quantize_row_{name.lower().replace('_k', '_K')}_ref")
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        fn(x.ctypes.data, out.ctypes.data, x.size)
        return out

    def quantize_weighted(self, x: np.ndarray, imatrix: np.ndarray, name: str) -> np.ndarray:
        """(n_rows, n_per_row) float32 with importances (n_per_row,) -> (n_rows, row bytes) uint8.

        llama.cpp's ``quantize_<type>(src, dst, nrow, n_per_row, quant_weights)``, the call
        ``llama-quantize --imatrix`` makes for each chunk of rows.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        qw = np.ascontiguousarray(imatrix, dtype=np.float32)
        assert x.ndim == 2 and qw.shape == (x.shape[1],)
        per_block = 256 if name.endswith("_K") else 32
        out = np.zeros((x.shape[0], x.shape[1] // per_block * self.block_size(name)), dtype=np.uint8)
        fn = getattr(self.lib, f"quantize_{name.lower().replace('_k', '_K')}")
        fn.restype = ctypes.c_size_t
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
        written = fn(x.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1], qw.ctypes.data)
        assert written == out.size, (written, out.size)
        return out


@pytest.fixture(scope="session")
def llama_cpp_ref() -> LlamaCppReference:
    try:
        return LlamaCppReference(_build(_sdist()))
    except Unavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"llama.cpp's reference quantizers are required in CI: {exc}")
        pytest.skip(f"llama.cpp's reference quantizers are unavailable: {exc}")
