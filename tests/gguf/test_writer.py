"""The GGUF writer: llama.cpp's tensor types, files gguf-py and transformers load, errors that say where."""
import copy

import numpy as np
import pytest
import torch

from qtutor.gguf import (
    FILE_TYPES,
    GGUFFormatError,
    choose_tensor_type,
    dequantized_like_gguf,
    read_gguf,
    write_gguf,
)
from qtutor.gguf import io as gguf_io
from qtutor.model import gguf_source_path, load_model

BYTES_PER_256 = {"F32": 1024, "F16": 512, "Q8_0": 272, "Q5_1": 192, "Q5_0": 176, "Q4_1": 160, "Q4_0": 144,
                 "Q6_K": 210, "Q5_K": 176, "Q4_K": 144, "Q3_K": 110, "Q2_K": 84}


@pytest.fixture(scope="module")
def q4_k_m(smollm2, tmp_path_factory):
    model, tok = smollm2
    path = tmp_path_factory.mktemp("gguf") / "smollm2-Q4_K_M.gguf"
    types = write_gguf(model, path, "Q4_K_M", tokenizer=tok, pre="smollm")
    return path, types


def test_metadata_from_the_hf_model_equals_the_shipped_files(q4_k_m):
    """Architecture and tokenizer keys derived from config + tokenizer equal llama.cpp's own conversion."""
    path, _ = q4_k_m
    ours, shipped = read_gguf(path), read_gguf(gguf_source_path())
    keys = [k for k in shipped.fields if k.startswith(("llama.", "tokenizer."))]
    assert len(keys) > 20
    for k in keys:
        assert ours.fields[k].contents() == shipped.fields[k].contents(), k


def test_template_metadata_copy(smollm2, tmp_path):
    model, _ = smollm2
    write_gguf(model, tmp_path / "t.gguf", "Q8_0", template=gguf_source_path())
    ours, shipped = read_gguf(tmp_path / "t.gguf"), read_gguf(gguf_source_path())
    assert ours.fields["general.name"].contents() == shipped.fields["general.name"].contents()
    assert ours.fields["general.file_type"].contents() == 7


def test_llama_cpp_type_choices_for_smollm2(q4_k_m):
    _, types = q4_k_m
    assert types["token_embd.weight"] == "Q8_0"  # tied output, 576 not a multiple of 256
    assert types["blk.0.attn_norm.weight"] == "F32"
    assert types["blk.5.attn_q.weight"] == "Q5_0"  # Q4_K falls back: rows of 576
    assert types["blk.0.attn_v.weight"] == "Q8_0"  # use_more_bits -> Q6_K -> falls back to Q8_0
    assert types["blk.4.attn_v.weight"] == "Q5_0"
    assert types["blk.0.ffn_down.weight"] == "Q6_K"  # rows of 1536 = 6 x 256: no fallback
    assert types["blk.3.ffn_down.weight"] == "Q4_K"
    assert types["blk.5.ffn_down.weight"] == "Q6_K"  # (5 - 3) % 3 == 2


def test_file_reads_and_sizes_follow_block_structs(q4_k_m):
    path, types = q4_k_m
    reader = read_gguf(path)
    assert reader.fields["general.file_type"].contents() == 15
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    data_bytes = 0
    for t in reader.tensors:
        assert t.tensor_type.name == types[t.name]
        assert int(t.n_bytes) == int(t.n_elements) * BYTES_PER_256[types[t.name]] // 256
        data_bytes += int(t.n_bytes)
    assert 0 < path.stat().st_size - data_bytes < 4 * 2**20  # the rest is metadata, tokenizer and padding


def test_transformers_loads_it_with_the_same_logits(q4_k_m, smollm2):
    path, types = q4_k_m
    model, tok = smollm2
    loaded, loaded_tok = load_model(path)
    expected = copy.deepcopy(model)
    dequantized_like_gguf(expected, types)
    ids = tok("The history of quantization", return_tensors="pt")["input_ids"]
    assert loaded_tok("The history of quantization")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected(ids).logits)


@pytest.mark.parametrize("file_type", FILE_TYPES)
def test_every_file_type_has_a_type_for_every_tensor(file_type):
    kinds = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up"]
    for i in range(30):
        for k in kinds:
            t = choose_tensor_type(f"blk.{i}.{k}.weight", (576, 576), file_type, 30, 3, True)
            assert 576 % (256 if t.endswith("_K") else 32) == 0
        t = choose_tensor_type(f"blk.{i}.ffn_down.weight", (1536, 576), file_type, 30, 3, True)
        assert t.endswith("_K") or file_type == "Q8_0"


def test_unknown_file_type_lists_valid_ones(smollm2, tmp_path):
    model, _ = smollm2
    with pytest.raises(ValueError, match=r"unknown file type 'Q4_K_XL'.*Q4_K_M"):
        write_gguf(model, tmp_path / "x.gguf", "Q4_K_XL", template=gguf_source_path())
    assert not list(tmp_path.iterdir())


def test_failure_leaves_nothing_behind(smollm2, tmp_path, monkeypatch):
    model, _ = smollm2
    calls = {"n": 0}
    real = gguf_io.quantize_tensor

    def flaky(a, t):
        calls["n"] += 1
        if calls["n"] == 20:
            raise RuntimeError("disk full (simulated)")
        return real(a, t)

    monkeypatch.setattr(gguf_io, "quantize_tensor", flaky)
    with pytest.raises(RuntimeError, match="simulated"):
        write_gguf(model, tmp_path / "x.gguf", "Q8_0", template=gguf_source_path())
    assert not list(tmp_path.iterdir())


def test_truncated_and_corrupt_files(q4_k_m, tmp_path):
    path, _ = q4_k_m
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GGUFFormatError, match=r"cut\.gguf: truncated — tensor 'blk\.\d+\.\w+\.weight' \(\w+\) needs bytes"):
        read_gguf(cut)
    tail = tmp_path / "tail.gguf"
    tail.write_bytes(data[:-1000])  # header intact, last tensor short
    with pytest.raises(GGUFFormatError, match=r"truncated — tensor 'blk\.29\.\w+\.weight' \(\w+\) needs bytes \d+\.\.\d+ but the file has \d+"):
        read_gguf(tail)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGML" + data[4:1000])
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        read_gguf(bad)
    header_only = tmp_path / "header.gguf"
    header_only.write_bytes(data[:100])
    with pytest.raises(GGUFFormatError, match="truncated or corrupt"):
        read_gguf(header_only)
    with pytest.raises(FileNotFoundError):
        read_gguf(tmp_path / "missing.gguf")


def test_permutation_round_trip(smollm2):
    """GGUF q/k layout, dequantized from the shipped file, equals the permuted Hugging Face weights."""
    from gguf import quants

    model, _ = smollm2
    ours = gguf_io.gguf_tensors_from_hf(model)
    reader = read_gguf(gguf_source_path())
    for t in reader.tensors:
        if t.name.startswith("blk.7."):
            deq = quants.dequantize(t.data, t.tensor_type)
            assert np.array_equal(deq.reshape(ours[t.name].shape), ours[t.name]), t.name


def test_per_tensor_type_overrides(smollm2, q4_k_m, tmp_path):
    """A mixture of one's own (as llama-quantize --tensor-type): the named tensors take the given types, the rest
    follow the file type's rules, and transformers loads the file as qtutor's coders decode it."""
    model, tok = smollm2
    override = {"blk.0.attn_v.weight": "Q8_0", "blk.3.attn_q.weight": "Q4_1", "blk.5.ffn_down.weight": "Q2_K"}
    path = tmp_path / "mixed.gguf"
    types = write_gguf(model, path, "Q4_K_M", tokenizer=tok, pre="smollm", types=override)
    plain = q4_k_m[1]
    assert {n: t for n, t in types.items() if n in override} == override
    assert {n: t for n, t in types.items() if n not in override} == {n: t for n, t in plain.items() if n not in override}
    stored = {t.name: t.tensor_type.name for t in read_gguf(path).tensors}
    assert {n: stored[n] for n in override} == override
    loaded, _ = load_model(path)
    expected = copy.deepcopy(model)
    dequantized_like_gguf(expected, types)
    ids = tok("The history of quantization", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, expected(ids).logits)


@pytest.mark.parametrize("override, message", [
    ({"blk.99.attn_q.weight": "Q8_0"}, r"types\['blk.99.attn_q.weight'\]: not a 2-D weight"),
    ({"output_norm.weight": "Q8_0"}, "not a 2-D weight"),
    ({"blk.0.attn_q.weight": "Q3_0"}, "'Q3_0': allowed Q8_0, Q4_0"),
    ({"blk.0.attn_q.weight": "Q4_K"}, "rows of 576 are not a multiple of Q4_K's block of 256"),
])
def test_bad_overrides_are_refused_before_writing(smollm2, tmp_path, override, message):
    model, _ = smollm2
    with pytest.raises(ValueError, match=message):
        write_gguf(model, tmp_path / "x.gguf", "Q4_K_M", template=gguf_source_path(), types=override)
    assert not list(tmp_path.iterdir())
