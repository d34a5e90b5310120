"""Checkpoint layouts other tools read: GPTQ, AWQ and compressed-tensors packing; packed quantized linears."""
