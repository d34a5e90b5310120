"""Quantization schemes as data: how many bits, which grid, which granularity.

A :class:`QuantSpec` names everything needed to map floats to integer codes:

* ``n_bits`` (2..8) and ``symmetric``;
* for asymmetric grids, the kind of zero-point: an *integer* code that maps
  to 0.0 (PyTorch, GPTQ, AWQ: ``x ≈ (q - zero_point) * scale``) or a *float
  offset* (GGUF Q4_1 and the k-quants: ``x ≈ q * scale + offset``, where
  ``offset`` is the block minimum and 0.0 need not be on the grid);
* the granularity: which elements share one scale.

Invalid values fail at construction with a message naming the field.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "ZeroPoint",
    "Granularity",
    "PerTensor",
    "PerChannel",
    "PerToken",
    "PerGroup",
    "QuantSpec",
    "MIN_BITS",
    "MAX_BITS",
    "check_n_bits_group_size",
    "check_group_size",
]

MIN_BITS, MAX_BITS = 2, 8


def check_group_size(group_size: int | None, allow_none: bool = True) -> None:
    """``group_size``: a positive integer, or ``None`` for "no groups" where ``allow_none``; never 0 or -1."""
    if group_size is None:
        if not allow_none:
            raise ValueError("group_size=None: PerGroup needs a positive integer; for one scale per row "
                             "use PerChannel(axis=0)")
        return
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ValueError(f"group_size={group_size!r}: must be a positive integer or None (no groups)")
    if group_size < 1:
        none = " or None" if allow_none else ""
        raise ValueError(
            f"group_size={group_size!r}: must be a positive integer{none}; \"no groups\" is spelled None "
            "(one scale per output row: PerChannel(axis=0) in a QuantSpec), never 0 or -1"
        )


def check_n_bits_group_size(n_bits: int, group_size: int | None) -> None:
    """The one validation of ``n_bits`` and ``group_size`` that specs, grids and method configs share.

    ``n_bits``: an integer from 2 to 8. ``group_size``: a positive integer, or
    ``None`` for "no groups" (one scale per output row). "No groups" is spelled one
    way: ``0`` and ``-1`` (the spellings of some reference scripts) are refused,
    naming ``None``. Raises ``ValueError`` naming the field, the value and what is allowed.
    """
    if isinstance(n_bits, bool) or not isinstance(n_bits, int) or not MIN_BITS <= n_bits <= MAX_BITS:
        raise ValueError(f"n_bits={n_bits!r}: must be an integer from {MIN_BITS} to {MAX_BITS}")
    check_group_size(group_size)


class ZeroPoint(enum.Enum):
    """How an asymmetric grid is shifted."""

    INTEGER = "integer"  # x ≈ (q - zero_point) * scale, zero_point an integer code
    FLOAT = "float"  # x ≈ q * scale + offset, offset a float (the group minimum)


@dataclass(frozen=True)
class Granularity:
    """Base class: which elements of a tensor share one (scale, zero-point)."""


@dataclass(frozen=True)
class PerTensor(Granularity):
    """One scale for the whole tensor."""


@dataclass(frozen=True)
class PerChannel(Granularity):
    """One scale per index along ``axis``; statistics reduce over every other axis.

    For a weight ``w`` of shape ``(out_features, in_features)`` the usual
    choice is ``axis=0``: one scale per output channel (row).
    """

    axis: int = 0


@dataclass(frozen=True)
class PerToken(Granularity):
    """One scale per token: per row of an activation ``x`` of shape ``(..., hidden)``.

    Equivalent to :class:`PerChannel` over every axis but the last.
    """


@dataclass(frozen=True)
class PerGroup(Granularity):
    """One scale per ``group_size`` consecutive elements along ``axis``.

    For ``w`` of shape ``(out_features, in_features)`` with ``axis=-1`` this is
    the GPTQ/AWQ/GGUF layout: each row is cut into ``ceil(in_features / group_size)``
    groups, and no group straddles two rows. When ``group_size`` does not divide
    the axis the last group is shorter (SmolLM2's 576 = 4.5 × 128 gives four groups
    of 128 and one of 64), as in GPTQ's reference and :func:`qtutor.primitives.grid.rtn_grid_quantize`.
    """

    group_size: int = 128
    axis: int = -1

    def __post_init__(self) -> None:
        check_group_size(self.group_size, allow_none=False)
        if isinstance(self.axis, bool) or not isinstance(self.axis, int):
            raise ValueError(f"axis={self.axis!r}: must be an integer")


@dataclass(frozen=True)
class QuantSpec:
    """A uniform quantization scheme.

    Args:
        n_bits: bits per code, 2..8.
        symmetric: codes in ``[-(2**(n_bits-1) - 1), 2**(n_bits-1) - 1]``
            centred on zero, ``scale = max|x| / (2**(n_bits-1) - 1)``; else
            codes in ``[0, 2**n_bits - 1]`` spanning ``[min, max]``.
        zero_point: for asymmetric grids, :class:`ZeroPoint.INTEGER` or
            :class:`ZeroPoint.FLOAT`; ignored when ``symmetric``.
        granularity: a :class:`Granularity`.
        clip_ratio: shrink the range to this fraction of ``max|x|`` (symmetric)
            or of ``[min, max]`` (asymmetric) before choosing the scale; 1.0
            means no clipping.
    """

    n_bits: int = 8
    symmetric: bool = True
    zero_point: ZeroPoint = ZeroPoint.INTEGER
    granularity: Granularity = PerTensor()
    clip_ratio: float = 1.0

    def __post_init__(self) -> None:
        check_n_bits_group_size(self.n_bits, None)  # QuantSpec's groups live in PerGroup
        if not isinstance(self.symmetric, bool):
            # QuantSpec(4, PerGroup(128)) would otherwise read the granularity as symmetric=True
            raise ValueError(
                f"symmetric={self.symmetric!r}: must be True or False (pass the granularity by name: "
                "QuantSpec(4, granularity=PerGroup(128)))"
            )
        if not isinstance(self.zero_point, ZeroPoint):
            raise ValueError(
                f"zero_point={self.zero_point!r}: must be ZeroPoint.INTEGER or ZeroPoint.FLOAT"
            )
        if not isinstance(self.granularity, Granularity):
            raise ValueError(
                f"granularity={self.granularity!r}: must be PerTensor(), PerChannel(axis), "
                "PerToken() or PerGroup(group_size, axis)"
            )
        if not 0.0 < float(self.clip_ratio) <= 1.0:
            raise ValueError(f"clip_ratio={self.clip_ratio!r}: must be in (0, 1]")

    @property
    def qmin(self) -> int:
        """Smallest code used."""
        return -(2 ** (self.n_bits - 1) - 1) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest code used."""
        return 2 ** (self.n_bits - 1) - 1 if self.symmetric else 2**self.n_bits - 1

    @property
    def has_integer_zero_point(self) -> bool:
        return not self.symmetric and self.zero_point is ZeroPoint.INTEGER

    @property
    def has_offset(self) -> bool:
        return not self.symmetric and self.zero_point is ZeroPoint.FLOAT

    def describe(self) -> str:
        """Short human label, e.g. ``'W4 asym g64'``."""
        g = self.granularity
        gran = {
            PerTensor: "per-tensor",
            PerChannel: "per-channel",
            PerToken: "per-token",
        }.get(type(g), f"g{getattr(g, 'group_size', '')}")
        kind = "sym" if self.symmetric else (
            "asym" if self.zero_point is ZeroPoint.INTEGER else "asym-offset"
        )
        clip = "" if self.clip_ratio == 1.0 else f" clip{self.clip_ratio:g}"
        return f"{self.n_bits}-bit {kind} {gran}{clip}"
