"""PyTorch-level compression: structured channel pruning, distillation, depthwise-separable
replacement and the training loop they share.

These are building blocks; the registered passes that use them (and turn their results into
ONNX artifacts) live in :mod:`edgehub.converters.passes.torch_compress`.
"""
