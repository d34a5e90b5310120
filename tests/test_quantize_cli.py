"""``qtutor quantize`` / ``qtutor eval`` on a tiny Llama folder made here (the course tokenizer, random weights): the
files they write load in transformers and in qtutor, the dry-run size matches the file, bad input exits 2 with a
message naming the argument and leaves nothing behind."""
import json

import pytest
import torch

from qtutor import quantize_cli
from qtutor.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, smollm2):  # the course tokenizer (the smollm2 fixture marks these tests slow)
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = smollm2[1]
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny") / "float"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_choices_match_the_package():
    from qtutor.data import Corpus
    from qtutor.formats.checkpoint import FORMATS
    from qtutor.gguf import FILE_TYPES

    assert quantize_cli.FORMATS == FORMATS and quantize_cli.FILE_TYPES == FILE_TYPES
    assert quantize_cli.CORPORA == tuple(c.name.lower() for c in Corpus)


def test_gptq_compressed_tensors_loads_in_transformers_and_qtutor(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    from qtutor.formats.checkpoint import load_quantized

    out = tmp_path / "gptq-ct"
    assert main(["quantize", str(tiny_folder), str(out), "--method", "gptq", "--group-size", "32", "--n-calib", "4",
                 "--seq-len", "32", "--format", "compressed-tensors"]) == 0
    said = capsys.readouterr().out
    assert "W4 g32" in said and "wrote" in said
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ours = load_quantized(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, rtol=1e-4, atol=1e-4)
    assert (out / "tokenizer.json").is_file()  # the folder loads on its own


def test_dry_run_writes_nothing_and_its_size_matches_the_file(tiny_folder, tmp_path, capsys):
    out = tmp_path / "rtn"
    assert main(["quantize", str(tiny_folder), str(out), "--method", "rtn", "--group-size", "32", "--dry-run"]) == 0
    assert not out.exists() and "dry run: nothing written" in capsys.readouterr().out
    assert main(["quantize", str(tiny_folder), str(out), "--method", "rtn", "--group-size", "32"]) == 0
    from qtutor.model import load_model

    model, _ = load_model(tiny_folder)
    est = quantize_cli.estimate_size(model, "rtn", 4, 32, "gptq", None)["bytes"]
    actual = (out / "model.safetensors").stat().st_size
    assert abs(actual - est) / actual < 0.02  # the safetensors header, GPTQ's g_idx and word padding


def test_awq_checkpoint_and_eval_against_the_float_model(tiny_folder, tmp_path, capsys):
    out = tmp_path / "awq"
    assert main(["quantize", str(tiny_folder), str(out), "--method", "awq", "--group-size", "32", "--n-calib", "4",
                 "--seq-len", "32"]) == 0
    capsys.readouterr()
    report = tmp_path / "eval.json"
    assert main(["eval", str(out), "--reference", str(tiny_folder), "--windows", "2", "--ctx", "64",
                 "--json", str(report)]) == 0
    said = capsys.readouterr().out
    r = json.loads(report.read_text())
    assert r["kl"] > 0 and 0 < r["top1"] <= 1 and r["perplexity"] > 1 and "KL" in said
    assert main(["eval", str(tiny_folder), "--windows", "1", "--ctx", "64"]) == 0
    assert "perplexity" in capsys.readouterr().out


def test_gguf_loads_in_transformers(tiny_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "tiny-q8_0.gguf"
    assert main(["quantize", str(tiny_folder), str(out), "--gguf", "Q8_0"]) == 0
    assert "Q8_0" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name, dtype=torch.float32).eval()
    ref = AutoModelForCausalLM.from_pretrained(tiny_folder, dtype=torch.float32).eval()
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = loaded(ids).logits, ref(ids).logits
    assert float((a.softmax(-1) - b.softmax(-1)).abs().max()) < 0.05  # Q8_0 against float
    mixed = tmp_path / "tiny-mixed.gguf"
    assert main(["quantize", str(tiny_folder), str(mixed), "--gguf", "Q8_0", "--tensor-type",
                 "blk.1.ffn_up.weight=Q4_0", "--tensor-type", "blk.0.attn_v.weight=Q5_1", "--dry-run"]) == 0
    dry = capsys.readouterr().out
    assert main(["quantize", str(tiny_folder), str(mixed), "--gguf", "Q8_0", "--tensor-type",
                 "blk.1.ffn_up.weight=Q4_0", "--tensor-type", "blk.0.attn_v.weight=Q5_1"]) == 0
    said = capsys.readouterr().out
    assert "1 × Q4_0" in said and "1 × Q5_1" in said and dry.splitlines()[0] == said.splitlines()[0]
    from qtutor.gguf import read_gguf

    stored = {t.name: t.tensor_type.name for t in read_gguf(mixed).tensors}
    assert stored["blk.1.ffn_up.weight"] == "Q4_0" and stored["blk.0.attn_v.weight"] == "Q5_1"
    assert stored["blk.0.attn_q.weight"] == "Q8_0"


@pytest.mark.parametrize("argv, message", [
    (["quantize", "/nonexistent", "OUT", "--method", "rtn"], "MODEL='/nonexistent'"),
    (["quantize", "TINY", "OUT", "--method", "rtn", "--group-size", "48"], "--group-size=48"),
    (["quantize", "TINY", "OUT", "--method", "rtn", "--bits", "9"], "--bits=9"),
    (["quantize", "TINY", "OUT.gguf", "--method", "rtn"], "--gguf TYPE"),
    (["quantize", "TINY", "OUT", "--gguf", "Q8_0"], "must end in .gguf"),
    (["eval", "TINY", "--windows", "-1"], "--windows=-1"),
    (["quantize", "TINY", "OUT", "--method", "awq", "--symmetric", "--group-size", "32"], "--symmetric"),
    (["quantize", "TINY", "OUT", "--method", "nf4", "--bits", "3"], "--bits=3: NF4 codes are 4 bits"),
    (["quantize", "TINY", "OUT.gguf", "--gguf", "Q8_0", "--tensor-type", "blk.0.attn_v.weight"], "write NAME=TYPE"),
    (["quantize", "TINY", "OUT.gguf", "--gguf", "Q8_0", "--tensor-type", "blk.7.attn_v.weight=Q8_0"],
     "--tensor-type: types['blk.7.attn_v.weight']: not a 2-D weight"),
    (["quantize", "TINY", "OUT", "--method", "rtn", "--tensor-type", "blk.0.attn_v.weight=Q8_0"],
     "--tensor-type is for --gguf"),
    (["quantize", "TINY", "OUT", "--method", "nf4", "--group-size", "48"], "--group-size=48: NF4's absmax block"),
    (["quantize", "TINY", "OUT", "--method", "nf4", "--format", "gptq"], "--format=gptq: --method nf4 writes"),
    (["quantize", "TINY", "OUT", "--method", "nf4", "--no-symmetric"], "--symmetric: NF4's levels are fixed"),
])
def test_bad_input_exits_2_naming_the_argument(tiny_folder, tmp_path, capsys, argv, message):
    argv = [str(tiny_folder) if a == "TINY" else str(tmp_path / a) if a.startswith("OUT") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_unsupported_or_quantized_models_are_refused(tiny_folder, tmp_path, capsys):
    other = tmp_path / "gpt2"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert main(["quantize", str(other), str(tmp_path / "o"), "--method", "rtn"]) == 2
    assert "model_type 'gpt2'" in capsys.readouterr().err
    q = tmp_path / "q"
    assert main(["quantize", str(tiny_folder), str(q), "--method", "rtn", "--group-size", "32"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(q), str(tmp_path / "qq"), "--method", "rtn"]) == 2
    assert "already quantized" in capsys.readouterr().err and not (tmp_path / "qq").exists()


def test_a_folder_holding_other_files_is_not_replaced(tiny_folder, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert main(["quantize", str(tiny_folder), str(out), "--method", "rtn", "--group-size", "32"]) == 2
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_the_float_models_own_folder_is_not_replaced(tiny_folder, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_folder.iterdir()}
    assert main(["quantize", str(tiny_folder), str(tiny_folder), "--method", "rtn", "--group-size", "32"]) == 2
    assert "holds files that are not part of a checkpoint (generation_config.json)" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in tiny_folder.iterdir()} == before


def test_nf4_folder_loads_in_transformers_with_bitsandbytes_and_in_qtutor(tiny_folder, tmp_path, capsys):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    from qtutor.formats.checkpoint import load_quantized
    from qtutor.model import load_model
    from qtutor.nn import NF4Linear

    out = tmp_path / "nf4"
    assert main(["quantize", str(tiny_folder), str(out), "--method", "nf4", "--dry-run"]) == 0
    assert not out.exists() and "NF4 block 64" in capsys.readouterr().out
    assert main(["quantize", str(tiny_folder), str(out), "--method", "nf4"]) == 0
    assert "wrote" in capsys.readouterr().out and (out / "tokenizer.json").is_file()
    model, _ = load_model(tiny_folder)
    est = quantize_cli.estimate_size(model, "nf4", 4, 64, None, None)["bytes"]
    actual = (out / "model.safetensors").stat().st_size
    assert abs(actual - est) / actual < 0.02  # the header, the quant maps and each layer's JSON state
    ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(out, device_map="cpu", dtype=torch.float32).eval()
    ours = load_quantized(out)
    assert isinstance(ours.model.layers[1].mlp.gate_proj, NF4Linear)
    assert type(theirs.model.layers[1].mlp.gate_proj).__name__ == "Linear4bit"
    with torch.no_grad():
        a, b = theirs(ids).logits, ours(ids).logits
    assert float((a - b).abs().max()) < 0.05 * float(b.abs().max())  # bitsandbytes' CPU matmul is not fp32-exact
    assert main(["eval", str(out), "--reference", str(tiny_folder), "--windows", "1", "--ctx", "64"]) == 0
    assert "KL" in capsys.readouterr().out


def test_gptq_over_two_processes_writes_the_single_process_checkpoint(tiny_folder, tmp_path, capsys):
    """--nproc 2 (two spawned gloo processes) gives the same safetensors bytes as one process: the same batches of
    8, Hessian terms added in one process's order."""
    common = ["--method", "gptq", "--group-size", "32", "--n-calib", "16", "--seq-len", "32"]
    assert main(["quantize", str(tiny_folder), str(tmp_path / "one"), *common]) == 0
    assert main(["quantize", str(tiny_folder), str(tmp_path / "two"), *common, "--nproc", "2"]) == 0
    assert "GPTQ over 2 processes (gloo)" in capsys.readouterr().out
    assert (tmp_path / "one" / "model.safetensors").read_bytes() == (tmp_path / "two" / "model.safetensors").read_bytes()
    assert main(["quantize", str(tiny_folder), str(tmp_path / "x"), "--method", "awq", "--nproc", "2"]) == 2
    assert "--nproc=2: several processes are for --method gptq" in capsys.readouterr().err
    assert main(["quantize", str(tiny_folder), str(tmp_path / "x"), "--method", "gptq", "--nproc", "0"]) == 2
    assert "--nproc=0: at least 1 process" in capsys.readouterr().err
