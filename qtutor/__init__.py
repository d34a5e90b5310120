"""qtutor: quantizing large language models from scratch.

Layers, bottom to top: ``qtutor.primitives`` (pure tensor functions),
``qtutor.methods`` (RTN, and the papers' methods), ``qtutor.model`` (loading the
real model, walking and quantizing its layers), ``qtutor.pipeline`` (block-by-block
GPTQ/AWQ over a whole model), ``qtutor.nn`` (the quantized Linears and
``qtutor.convert(model, config)``, with the configs of ``qtutor.config``),
``qtutor.formats`` and ``qtutor.gguf`` (checkpoint layouts other tools read),
``qtutor.eval`` and ``qtutor.data``; Triton kernels in ``qtutor.kernels``;
exercise checkers in ``qtutor.checks``.
"""
__version__ = "0.1.0"

from . import primitives  # noqa: F401  (re-exported for notebooks)
from .primitives import *  # noqa: F401,F403


def __getattr__(name: str):
    """``qtutor.convert`` (:func:`qtutor.nn.convert`), imported on first use: ``import qtutor`` stays light."""
    if name == "convert":
        from .nn import convert

        return convert
    raise AttributeError(f"module 'qtutor' has no attribute {name!r}")
