"""Checked safetensors headers and atomic folders, with random corruption of valid files (hypothesis)."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from qtutor.formats import files
from qtutor.formats.files import atomic_folder, read_header


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("st") / "model.safetensors"
    save_file({"model.layers.0.mlp.up_proj.qweight": torch.arange(64, dtype=torch.int32).view(8, 8),
               "model.layers.0.mlp.up_proj.scales": torch.ones(2, 8, dtype=torch.float16),
               "model.norm.weight": torch.ones(16)}, str(path), metadata={"format": "pt"})
    return path.read_bytes()


def test_reads_a_valid_header(valid_bytes, tmp_path):
    (tmp_path / "m.safetensors").write_bytes(valid_bytes)
    h = read_header(tmp_path / "m.safetensors")
    assert h["model.layers.0.mlp.up_proj.qweight"].dtype == torch.int32
    assert h["model.layers.0.mlp.up_proj.scales"].shape == (2, 8)


def test_truncation_names_the_layer(valid_bytes, tmp_path):
    path = tmp_path / "m.safetensors"
    path.write_bytes(valid_bytes[:-10])
    with pytest.raises(ValueError, match=r"tensor '.*' \(layer .*\).*truncated"):
        read_header(path)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_corruption_is_a_clear_error(valid_bytes, tmp_path, data):
    """A truncation anywhere, or flipped bytes in the header: ``read_header`` accepts it (a flip that keeps
    the header valid, e.g. in the metadata) or raises ValueError naming the file — nothing else."""
    n = 8 + int.from_bytes(valid_bytes[:8], "little")
    blob = bytearray(valid_bytes)
    if data.draw(st.booleans(), label="truncate"):
        blob = blob[: data.draw(st.integers(0, len(blob) - 1), label="length")]
    else:
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            i = data.draw(st.integers(0, n - 1), label="at")
            blob[i] ^= data.draw(st.integers(1, 255), label="mask")
    path = tmp_path / "corrupt.safetensors"
    path.write_bytes(bytes(blob))
    try:
        header = read_header(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    # accepted: then safetensors itself must read every tensor without error
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        for key in header:
            assert tuple(f.get_tensor(key).shape) == header[key].shape


def test_atomic_folder_replaces_whole(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "model.safetensors").write_text("old")
    (target / "config.json").write_text("old")
    with atomic_folder(target, frozenset({"model.safetensors", "config.json"})) as tmp:
        (tmp / "config.json").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # no file of the old one survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary or backup folder left


def test_atomic_folder_error_keeps_the_old(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "config.json").write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(target, frozenset({"config.json"})) as tmp:
            (tmp / "config.json").write_text("half")
            raise RuntimeError("disk full")
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_folder_failed_rename_restores_the_old(tmp_path, monkeypatch):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "config.json").write_text("old")
    real, calls = os.rename, []

    def rename(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # the new folder into place
            raise OSError("rename failed")
        return real(a, b)

    monkeypatch.setattr(files.os, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_folder(target, frozenset({"config.json"})) as tmp:
            (tmp / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_atomic_folder_refuses_foreign_files(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not part of a checkpoint \(notes.txt\)"):
        with atomic_folder(tmp_path / "ckpt", frozenset({"config.json"})):
            pytest.fail("must not be reached")
    assert (tmp_path / "ckpt" / "notes.txt").read_text() == "mine"
