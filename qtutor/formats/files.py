"""Files of a checkpoint: a checked safetensors header, and folders written whole or not at all.

* :func:`read_header` parses a ``.safetensors`` header itself (8-byte little-endian
  length, JSON, data offsets) and checks that every tensor's bytes lie inside the
  file and match its dtype and shape, so that a truncated or corrupt file is a
  ``ValueError`` naming the file and the tensor (hence the layer), before any
  tensor is read.
* :func:`atomic_folder` hands out a temporary folder beside the target; when the
  ``with`` block ends without error it replaces the target by it in two renames
  (the old one is kept until the new one is in place); on error the temporary
  folder is removed and the target is as it was.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["TensorInfo", "DTYPES", "read_header", "atomic_folder", "check_folder_names"]

# safetensors' dtype names -> torch dtypes
DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "U16": torch.uint16,
    "I32": torch.int32, "U32": torch.uint32, "I64": torch.int64, "U64": torch.uint64, "F16": torch.float16,
    "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
_MAX_HEADER = 100_000_000  # safetensors' own limit


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the header describes it."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets into the data section
    end: int


def _layer(key: str) -> str:
    return key.rpartition(".")[0] or key


def read_header(path: str | Path) -> dict[str, TensorInfo]:
    """``{tensor name: TensorInfo}`` of a safetensors file, checked against the file's size."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: {size} bytes, shorter than a safetensors header (truncated?)")
        n = int.from_bytes(head, "little")
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: the header claims {n} bytes but the file holds {size - 8} after the length "
                             "(truncated or not a safetensors file)")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the safetensors header is not valid JSON ({e}); the file is corrupt") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header is not a JSON object; the file is corrupt")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path}: __metadata__ must map strings to strings; the file is corrupt")
    infos: dict[str, TensorInfo] = {}
    for key, entry in header.items():
        where = f"{path}: tensor {key!r} (layer {_layer(key)})"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: its header entry is not an object; the file is corrupt")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPES:
            raise ValueError(f"{where}: dtype {dtype!r} is not a safetensors dtype; the file is corrupt")
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise ValueError(f"{where}: shape {shape!r} is not a list of sizes; the file is corrupt")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)):
            raise ValueError(f"{where}: data_offsets {offsets!r} are not two byte offsets; the file is corrupt")
        itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
        if offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            raise ValueError(f"{where}: {offsets[1] - offsets[0]} bytes stored for a {dtype} {tuple(shape)} tensor; "
                             "the file is corrupt")
        infos[key] = TensorInfo(DTYPES[dtype], tuple(shape), offsets[0], offsets[1])
    data = size - 8 - n
    at = 0
    for key, info in sorted(infos.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        where = f"{path}: tensor {key!r} (layer {_layer(key)})"
        if info.end > data:
            raise ValueError(f"{where}: its bytes {info.begin}…{info.end} lie past the end of the data "
                             f"({data} bytes): the file is truncated")
        if info.begin != at:
            raise ValueError(f"{where}: starts at byte {info.begin}, expected {at} (overlapping or missing "
                             "bytes); the file is corrupt")
        at = info.end
    if at != data:
        raise ValueError(f"{path}: {data - at} bytes after the last tensor; the file is corrupt")
    return infos


def _replace(tmp: Path, target: Path) -> None:
    """Put folder ``tmp`` at ``target``; an old ``target`` is removed only once the new one is in place."""
    if not target.exists():
        os.rename(tmp, target)
        return
    backup = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, backup)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def check_folder_names(target: Path, allowed: frozenset[str]) -> None:
    """Refuse a ``target`` that is a file, or a folder holding any name outside ``allowed``."""
    if target.exists():
        if not target.is_dir():
            raise ValueError(f"{target} is a file; a checkpoint is a folder")
        foreign = sorted(p.name for p in target.iterdir() if p.name not in allowed)
        if foreign:
            raise ValueError(f"{target} holds files that are not part of a checkpoint ({', '.join(foreign[:5])}): "
                             "the folder is replaced as a whole, so choose an empty or new folder")


@contextlib.contextmanager
def atomic_folder(target: str | Path, allowed: frozenset[str] = frozenset()) -> Iterator[Path]:
    """A fresh temporary folder beside ``target`` that replaces ``target`` if the block succeeds.

    ``target`` may be missing, or a folder holding only files named in ``allowed`` (the
    files a checkpoint of this kind consists of): it is replaced as a whole, so that no
    file of an older checkpoint survives next to the new one. Anything else there is
    refused before anything is written.
    """
    target = Path(target)
    check_folder_names(target, allowed)
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = target.stat().st_mode & 0o7777 if target.exists() else 0o777 & ~_umask()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, mode)
        _replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
