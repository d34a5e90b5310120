"""Checkpoint layouts other tools read: GPTQ, AWQ and compressed-tensors packing (``layouts``), the layouts
as a registry of objects (``registry.LAYOUTS``), checked safetensors headers and atomic folders (``files``),
and saving and loading whole checkpoints (``checkpoint``) into :class:`qtutor.nn.W4A16Linear`s."""
