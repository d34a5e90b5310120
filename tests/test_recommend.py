"""The recommender on the seeds' cases (70B on one 80 GB GPU, 8B on a 24 GB GPU, a laptop with no GPU): its answers
fit, rest on the recorded measurements they name, and its sizes agree with what qtutor writes."""
import json
from pathlib import Path

import pytest

from qtutor.recommend import model_shape, recommend, summary

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def _floats(x):
    if isinstance(x, dict):
        return set().union(*(_floats(v) for v in x.values())) if x else set()
    if isinstance(x, list):
        return set().union(*(_floats(v) for v in x)) if x else set()
    return {x} if isinstance(x, float) else set()


def _cites_a_real_row(option):
    """The option's KL is a number in the results file it names (not a constant in the code)."""
    file = option.quality_source.split(":")[0]
    assert (RESULTS / file).is_file(), option.quality_source
    assert option.kl == 0.0 or option.kl in _floats(json.loads((RESULTS / file).read_text())), option.quality_source


def test_70b_on_one_80gb_hopper_gets_4_bits():
    opts = recommend("llama-3-70b", 80, "hopper")
    by_key = {o.key: o for o in opts}
    assert not by_key["bf16"].fits and not by_key["fp8_w8a8"].fits  # 141 GB and 75 GB of weights + KV cache
    top = opts[0]
    assert top.fits and top.runs and top.bits_per_weight < 5
    assert top.decode_speedup and top.decode_speedup > 1 and "kernels_h100.json" in top.speed_source
    _cites_a_real_row(top)
    assert "does not fit" in summary(opts, len(opts))


def test_8b_on_a_24gb_gpu():
    quality = recommend("llama-3-8b", 24, "ampere", quality_critical=True)
    assert quality[0].key == "bf16" and quality[0].fits
    fast = recommend("llama-3-8b", 24, "ampere", priority="latency")
    assert fast[0].key.startswith("w4a16") and fast[0].decode_speedup > 1
    assert {o.key: o for o in fast}["fp8_w8a8"].runs is False  # Ampere has no FP8 tensor cores
    throughput = recommend("llama-3-8b", 24, "hopper", priority="throughput")
    assert throughput[0].key in ("fp8_w8a8", "int8_w8a8") and throughput[0].kl < 0.05
    for o in fast[:3]:
        _cites_a_real_row(o)


def test_a_laptop_without_a_gpu_gets_gguf():
    opts = recommend("llama-3-8b", 16, "none")
    runnable = [o for o in opts if o.runs and o.fits]
    assert runnable and all(o.key.startswith("gguf") for o in runnable)
    assert opts[0].key.startswith("gguf") and opts[0].kl <= 0.5
    assert "llama-cli" in " ".join(opts[0].commands)


def test_gguf_sizes_match_the_files_qtutor_writes(smollm2):
    """The shape-only size (no weights) equals the per-tensor size of the real model under the writer's type rules."""
    from qtutor.quantize_cli import estimate_size
    from qtutor.recommend import _gguf_bytes

    model = smollm2[0]
    assert model_shape(model) == model_shape("smollm2-135m")
    for ft in ("Q8_0", "Q4_K_M"):
        assert _gguf_bytes(model_shape("smollm2-135m"), ft)[0] == estimate_size(model, None, 0, None, None, ft)["bytes"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="gpt-5", memory_gb=80), "model='gpt-5'"),
    (dict(model={"hidden_size": 64}, memory_gb=80), "lacks"),
    (dict(model="llama-3-8b", memory_gb=0), "memory_gb=0"),
    (dict(model="llama-3-8b", memory_gb=24, gpu="tpu"), "gpu='tpu'"),
    (dict(model="llama-3-8b", memory_gb=24, priority="speed"), "priority='speed'"),
    (dict(model="llama-3-8b", memory_gb=24, context=0), "context=0"),
])
def test_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        recommend(**kwargs)


def test_the_command(capsys, tmp_path):
    from qtutor.cli import main

    assert main(["recommend", "llama-3-70b", "--memory", "80", "--gpu", "hopper"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1. ") and "weight_only_quality_h100.json" in out
    assert main(["recommend", str(tmp_path), "--memory", "80"]) == 2
    assert "MODEL=" in capsys.readouterr().err
