"""Where and in which precision a model runs: device choice, bf16/fp16 autocast.

Shared by training (:mod:`mt.training.train`), inference and the benchmark scripts, so that "auto"
means the same everywhere.
"""

from __future__ import annotations

import contextlib

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda when available, else cpu; anything else as given (``cpu``, ``cuda:1``)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` where the device runs bf16 matmuls natively (CUDA with bf16 support;
    a CPU with AVX-512 BF16 or AMX, as oneDNN reports it), else ``fp32``; anything else as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return "bf16" if native else "fp32"


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast context for the forward pass, or a no-op for ``fp32``.

    Weights stay fp32; matmuls run in the reduced dtype (``torch.autocast``).
    """
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


INFERENCE_PRECISIONS = ("fp32", "bf16", "int8")


def for_inference(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """``model`` as decoding runs it at ``precision`` (eval mode).

    - ``fp32``: the model itself.
    - ``bf16``: the model itself, its parameters and buffers cast to bfloat16 in place (half
      the memory; matmuls run natively on CPUs with AVX-512 BF16 or AMX and on CUDA); the
      search still normalises and ranks in float32.
    - ``int8``: a copy whose ``nn.Linear`` layers run int8 matmuls
      (``torch.ao.quantization.quantize_dynamic``: int8 weights, activations quantized per call,
      CPU only); embeddings, layer norms and attention stay float32.

    Raises:
        ValueError: an unknown precision, or int8 on a CUDA model.
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(INFERENCE_PRECISIONS)}")
    model.eval()
    if precision == "bf16":
        return model.to(torch.bfloat16)
    if precision == "int8":
        if next(model.parameters()).device.type != "cpu":
            raise ValueError("int8 decoding runs on the CPU only")
        import copy
        import warnings

        with warnings.catch_warnings():  # torch marks torch.ao.quantization deprecated, for torchao; it still runs
            warnings.filterwarnings("ignore", message=".*quantiz.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*torch.ao.quantization.*", category=DeprecationWarning)
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    return model
