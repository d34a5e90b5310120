"""Block-by-block ("sequential") quantization of a Llama-family model.

The order of GPTQ's and AWQ's reference code (IST-DASLab/gptq ``llama.py:
llama_sequential``, mit-han-lab/llm-awq ``run_awq``):

1. run the embeddings on the calibration ids and stop at block 0, keeping its
   inputs — the hidden states and the keyword arguments the model passes every
   block (rotary ``position_embeddings``, the attention mask, ``position_ids``);
2. for each block: collect the inputs of its linear layers, quantize them, then
   run the (quantized) block to produce the next block's inputs.

Only one block and the activations of the calibration set are on the working
device at a time. With a ``BlockSource`` that reads each block's weights from a
safetensors file (``SafetensorsBlocks``) the blocks of the model can stay on the
``meta`` device — no memory at all — until their turn, so a model larger than
memory is quantized one block at a time.

Quantizing is transactional (:class:`BlockTransaction`): the calibration ids and
every block's weights are checked before any block is touched; an error found
half-way (the activations of block 5 overflow) puts every block already changed
back as it was, and the error names the input to blame — the weights or the
activations, and which layer.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..model.walk import decoder_blocks

__all__ = [
    "LLAMA_SEQUENTIAL_GROUPS", "BlockInputs", "capture_block_inputs", "run_block", "collect_linear_inputs",
    "BlockSource", "InMemoryBlocks", "SafetensorsBlocks", "block_progress", "check_calibration_ids",
    "check_block_weights", "check_hidden", "BlockTransaction",
]

# The reference's true-sequential order: a group's inputs are collected after the
# groups before it in the same block have been quantized.
LLAMA_SEQUENTIAL_GROUPS: tuple[tuple[str, ...], ...] = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)


class _StopForward(Exception):
    """Raised by a hook once everything needed from a forward pass has been seen."""


@dataclass
class BlockInputs:
    """The inputs of one decoder block for the whole calibration set."""

    hidden: torch.Tensor  # (n_samples, seq_len, hidden_size) on the working device
    kwargs: dict = field(default_factory=dict)  # the same for every batch of one size
    batch_size: int = 8

    def batches(self) -> Iterator[torch.Tensor]:
        yield from self.hidden.split(self.batch_size)


def _to(obj, device: torch.device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to(o, device) for o in obj)
    return obj


def check_calibration_ids(model: nn.Module, input_ids: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``input_ids`` is a non-empty int64 (n_samples, seq_len) of valid token ids."""
    if not isinstance(input_ids, torch.Tensor):
        raise ValueError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.ndim != 2 or input_ids.dtype != torch.long:
        raise ValueError(f"input_ids must be int64 (n_samples, seq_len), got {input_ids.dtype} {tuple(input_ids.shape)}")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}: the calibration set is empty "
                         "(need at least one sample of at least one token)")
    vocab = model.model.embed_tokens.num_embeddings
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"input_ids holds token ids from {lo} to {hi}; the model's vocabulary is 0…{vocab - 1}")


def check_block_weights(block: nn.Module, prefix: str) -> None:
    """Raise ``ValueError`` naming the tensor unless every floating parameter of ``block`` is finite."""
    for name, p in block.named_parameters():
        if p.is_meta or not p.is_floating_point():
            continue
        if not bool(torch.isfinite(p).all()):
            bad = (~torch.isfinite(p.detach())).nonzero()[0].tolist()
            raise ValueError(f"{prefix}.{name}: the weights contain NaN or Inf (first at {bad}); "
                             "the calibration data is not the cause; nothing was changed")


def check_hidden(hidden: torch.Tensor, where: str) -> None:
    """Raise ``ValueError`` if the hidden states ``hidden`` (activations) hold NaN or Inf."""
    if not bool(torch.isfinite(hidden).all()):
        bad = (~torch.isfinite(hidden)).nonzero()[0].tolist()
        raise ValueError(f"{where} contain NaN or Inf (first at {bad}): the activations overflow although the "
                         "weights are finite (checked first); the model was put back as it was")


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, input_ids: torch.Tensor, device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None, batch_size: int = 8,
) -> BlockInputs:
    """Run the embeddings on ``input_ids`` (n_samples, seq_len) and keep what block 0 receives."""
    check_calibration_ids(model, input_ids)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: must be a positive integer")
    device = torch.device(device)
    inner = model.model
    block0 = decoder_blocks(model)[0]
    seen: list[torch.Tensor] = []
    kwargs: dict = {}

    def catch(module, args, kw):
        seen.append(args[0] if args else kw["hidden_states"])
        if not kwargs:
            kwargs.update({k: v for k, v in kw.items() if k != "hidden_states"})
        raise _StopForward

    moved = [inner.embed_tokens, inner.rotary_emb]
    homes = [next(m.parameters(), next(m.buffers(), None)).device for m in moved]
    for m in moved:
        m.to(device)
    hook = block0.register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for ids in input_ids.split(batch_size):
            with contextlib.suppress(_StopForward):
                model(ids.to(device), use_cache=False)
    finally:
        hook.remove()
        for m, home in zip(moved, homes):
            m.to(home)
    hidden = torch.cat(seen)
    if dtype is not None:
        hidden = hidden.to(dtype)
        kwargs = {k: tuple(t.to(dtype) for t in v) if k == "position_embeddings" else v for k, v in kwargs.items()}
    kwargs.pop("past_key_values", None)
    kwargs["use_cache"] = False
    check_hidden(hidden, "the embeddings of the calibration ids (the inputs of block 0)")
    return BlockInputs(hidden, {k: _to(v, device) for k, v in kwargs.items()}, batch_size)


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> torch.Tensor:
    """The block's outputs for every calibration sample: (n_samples, seq_len, hidden_size)."""
    return torch.cat([_first(block(h, **inputs.kwargs)) for h in inputs.batches()])


@torch.no_grad()
def collect_linear_inputs(
    block: nn.Module, inputs: BlockInputs, names: Sequence[str],
    on_input: Callable[[str, torch.Tensor], None],
) -> None:
    """Call ``on_input(name, x)`` with the input of each linear in ``names`` for every batch.

    The forward pass stops as soon as every named layer has been called, so
    collecting the inputs of ``q_proj`` does not pay for the MLP.
    """
    pending: set[str] = set()

    def make_hook(name: str):
        def hook(module, args):
            on_input(name, args[0])
            pending.discard(name)
            if not pending:
                raise _StopForward
        return hook

    hooks = [block.get_submodule(n).register_forward_pre_hook(make_hook(n)) for n in names]
    try:
        for h in inputs.batches():
            pending.update(names)
            with contextlib.suppress(_StopForward):
                block(h, **inputs.kwargs)
    finally:
        for hook in hooks:
            hook.remove()


class BlockSource:
    """Hands out the decoder blocks one at a time on the working device, and takes them back."""

    def __init__(self, model: nn.Module, device: torch.device | str) -> None:
        self.model, self.device = model, torch.device(device)
        self.blocks = decoder_blocks(model)

    def __len__(self) -> int:
        return len(self.blocks)

    def load(self, i: int) -> nn.Module:
        raise NotImplementedError

    def release(self, i: int, block: nn.Module) -> None:
        raise NotImplementedError

    def abort(self, i: int, block: nn.Module) -> None:
        """Give block ``i`` back after an error, without saving anything (default: :meth:`release`)."""
        self.release(i, block)

    #: whether the blocks are the model's own, in memory, so that a failed run must put them back
    restorable = False


class InMemoryBlocks(BlockSource):
    """Blocks already in memory: moved to the device for their turn, then back home."""

    def load(self, i: int) -> nn.Module:
        block = self.blocks[i]
        self._home = next(block.parameters()).device
        return block.to(self.device)

    def release(self, i: int, block: nn.Module) -> None:
        block.to(self._home)

    restorable = True


class SafetensorsBlocks(BlockSource):
    """Blocks whose weights stay in a safetensors file until their turn (the model's blocks sit on ``meta``).

    ``on_done(i, block)`` receives each finished block — e.g. to write its
    quantized tensors — before the block goes back to ``meta`` and its memory is freed.
    Peak memory is therefore one block, whatever the model's size.
    """

    def __init__(self, model: nn.Module, path: str | Path, device: torch.device | str,
                 on_done: Callable[[int, nn.Module], None] | None = None, prefix: str = "model.layers") -> None:
        super().__init__(model, device)
        from safetensors import safe_open

        self.path, self.prefix, self.on_done = Path(path), prefix, on_done
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such safetensors file")
        self._file = safe_open(str(self.path), framework="pt", device="cpu")
        self.loaded: list[int] = []  # which blocks have been materialised, in order (for tests)

    def load(self, i: int) -> nn.Module:
        block = self.blocks[i]
        head = f"{self.prefix}.{i}."
        names = [k for k in self._file.keys() if k.startswith(head)]
        if not names:
            raise KeyError(f"{self.path} holds no tensors for block {i} (expected keys starting with {head!r})")
        state = {k[len(head):]: self._file.get_tensor(k).to(self.device) for k in names}
        block.load_state_dict(state, assign=True, strict=True)
        self.loaded.append(i)
        return block

    def release(self, i: int, block: nn.Module) -> None:
        if self.on_done is not None:
            self.on_done(i, block)
        block.to("meta")

    def abort(self, i: int, block: nn.Module) -> None:
        block.to("meta")  # a failed block is not handed to on_done: nothing half-quantized is written


class BlockTransaction:
    """Copies of the blocks a quantization pass changes, to put them all back if it fails.

    Use as ``with BlockTransaction(source) as tx:`` and call ``tx.load(i)`` /
    ``tx.release(i, block)`` instead of the source's: for in-memory blocks each
    block's state is copied (to the CPU) before it is loaded, and on any error every
    block changed so far is restored in place — the model is exactly as it was.
    Blocks streamed from a file (:class:`SafetensorsBlocks`) are not the model's
    own: the failed block goes back to ``meta`` and nothing more is written.
    Before the first block is touched, every in-memory block's weights are checked
    (:func:`check_block_weights`), so bad weights are blamed before any work.
    """

    def __init__(self, source: BlockSource, prefix: str = "model.layers") -> None:
        self.source, self.prefix = source, prefix
        self.saved: dict[int, dict[str, torch.Tensor]] = {}
        self._current: tuple[int, nn.Module] | None = None

    def __enter__(self) -> "BlockTransaction":
        for i, block in enumerate(self.source.blocks):
            check_block_weights(block, f"{self.prefix}.{i}")
        return self

    def load(self, i: int) -> nn.Module:
        if self.source.restorable:
            self.saved[i] = {k: v.detach().to("cpu", copy=True) for k, v in self.source.blocks[i].state_dict().items()}
        block = self.source.load(i)
        self._current = (i, block)
        check_block_weights(block, f"{self.prefix}.{i}")  # streamed blocks are checked as they arrive
        return block

    def release(self, i: int, block: nn.Module) -> None:
        self.source.release(i, block)
        self._current = None

    @torch.no_grad()
    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.saved.clear()
            return
        if self._current is not None:
            self.source.abort(*self._current)
            self._current = None
        for i, state in self.saved.items():
            live = self.source.blocks[i].state_dict()
            for k, v in state.items():
                live[k].copy_(v)
        self.saved.clear()


def block_progress(n: int, desc: str, enabled: bool):
    """A per-block progress bar (:func:`qtutor.progress.progress`, shown in notebooks), or a plain range."""
    from ..progress import progress

    return progress(range(n), desc, total=n, unit="block", enabled=enabled)
