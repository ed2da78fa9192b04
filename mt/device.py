"""Where and in which precision a model runs: device choice, bf16/fp16 autocast.

Shared by training (:mod:`mt.train`), inference and the benchmark scripts, so that "auto"
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
