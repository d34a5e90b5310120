"""GPTQ over two gloo processes on CPU equals one process, bit for bit (SmolLM2's first blocks)."""
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from qtutor.config import GPTQConfig
from qtutor.data import calibration_samples
from qtutor.pipeline.distributed import course_model_worker, gptq_quantize_model_distributed

SETTINGS = dict(config=GPTQConfig(4, 64), batch_size=1, first_blocks=2)


CALIBRATION = dict(n_samples=5, seq_len=64, seed=0)  # 5 batches of 1: 3 on rank 0, 2 on rank 1


def _calibration(tok):
    return calibration_samples(tok, **CALIBRATION)


def test_two_gloo_processes_equal_one(smollm2, tmp_path):
    from qtutor.pipeline.gptq import gptq_quantize_model
    from qtutor.pipeline.sequential import InMemoryBlocks

    model, tok = smollm2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        import copy

        single = copy.deepcopy(model)
        blocks = InMemoryBlocks(single, "cpu")
        blocks.blocks = blocks.blocks[: SETTINGS["first_blocks"]]
        want = gptq_quantize_model(single, _calibration(tok), SETTINGS["config"], batch_size=SETTINGS["batch_size"],
                                   blocks=blocks, progress=False)
    finally:
        torch.set_num_threads(threads)
    mp.spawn(course_model_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "out"), CALIBRATION, SETTINGS),
             nprocs=2, join=True)
    got = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in range(2)]
    assert len(want) == 14 and all(set(g["results"]) == set(want) for g in got)
    for name, qw in want.items():
        for g in got:
            for field, value in vars(qw).items():
                other = g["results"][name][field]
                assert (torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other), (name, field)
    single_weights = {n: m.weight for n, m in single.named_modules() if isinstance(m, torch.nn.Linear)}
    for g in got:
        assert all(torch.equal(single_weights[n], w) for n, w in g["weights"].items())


def test_refuses_without_a_process_group(smollm2):
    model, tok = smollm2
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        gptq_quantize_model_distributed(model, _calibration(tok))


def test_refuses_fewer_batches_than_ranks(smollm2, tmp_path):
    model, tok = smollm2
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="first_blocks=0"):
            gptq_quantize_model_distributed(model, _calibration(tok), first_blocks=0)
        with pytest.raises(ValueError, match="batch_size=0"):
            gptq_quantize_model_distributed(model, _calibration(tok), batch_size=0)
    finally:
        dist.destroy_process_group()
