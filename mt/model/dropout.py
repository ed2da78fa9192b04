"""Dropout (Srivastava et al. 2014) whose masks cost less to draw on the CPU.

``torch.nn.functional.dropout`` on the CPU draws one float32 Bernoulli sample per element
(``bernoulli_``), saves the scaled float32 mask for the backward and multiplies: on a 2-core
AMD EPYC (AVX2) its 26 calls were 9.6% of a default-model fp32 training step
(``scripts/bench_train.py --profile``). ``masks="bits"`` draws the same mask from 16 random
bits per element instead: one ``Tensor.random_`` over 64-bit words (four elements per word,
the full 64-bit range), viewed as int16 and kept where the bits reach the threshold; the
backward reuses a bool mask (1 byte per element instead of 4). The drop probability is
rounded to a multiple of 2⁻¹⁶ (0.1 → 0.1000061) and the kept values are scaled by 1 / (1 − that
probability), so the expectation is exact. The bits come from torch's default generator, so
``torch.manual_seed`` and the generator state a checkpoint saves reproduce the masks as before.

``masks="bernoulli"`` is ``torch.nn.functional.dropout`` itself (the masks of runs trained
before ``bits`` existed). On CUDA and inside ``torch.compile`` both are
``torch.nn.functional.dropout``: CUDA's ``native_dropout`` is already one fused kernel, and
Inductor fuses dropout into the kernels it generates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mt.config import DROPOUT_MASKS

LEVELS = 1 << 16  # the bits mask's resolution: 16 bits per element


def _dropped_levels(p: float) -> int:
    return min(round(p * LEVELS), LEVELS - 1)  # p < 1 stays < 1: something is always kept


def drop_probability(p: float) -> float:
    """The probability ``masks="bits"`` drops an element with: ``p`` rounded to a multiple of
    2⁻¹⁶, at most 1 − 2⁻¹⁶."""
    return _dropped_levels(p) / LEVELS


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device) -> torch.Tensor:
    """A bool mask of ``shape``, each element True (kept) with probability 1 − :func:`drop_probability`.

    Drawn from torch's default generator of ``device``: ⌈n / 4⌉ 64-bit words, each giving four
    16-bit lanes, compared with a threshold.
    """
    n = 1
    for size in shape:
        n *= size
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(2**63), None)  # every bit uniform
    lanes = words.view(torch.int16)[:n].view(shape)  # uniform over [-2¹⁵, 2¹⁵)
    return lanes >= _dropped_levels(p) - LEVELS // 2


class _BitsDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p, x.device)
        ctx.scale = 1.0 / (1.0 - drop_probability(p))
        ctx.save_for_backward(keep)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool = True, masks: str = "bits") -> torch.Tensor:
    """``x`` with each element zeroed with probability ``p`` and the rest scaled by 1 / (1 − p)
    when ``training``; ``x`` itself otherwise or when ``p`` is 0.

    Args:
        x: any shape, any floating dtype.
        p: drop probability in [0, 1).
        masks: ``bits`` (16 random bits per element on the CPU; see the module docstring) or
            ``bernoulli`` (``torch.nn.functional.dropout``).

    Raises:
        ValueError: an unknown ``masks``.
    """
    if masks not in DROPOUT_MASKS:
        raise ValueError(f"unknown dropout masks {masks!r}; allowed: {', '.join(DROPOUT_MASKS)}")
    if not training or p == 0.0:
        return x
    return _BitsDropout.apply(x, p) if uses_bits(x, p, masks) else F.dropout(x, p, training=True)


def uses_bits(x: torch.Tensor, p: float, masks: str) -> bool:
    """Whether :func:`dropout` of ``x`` draws a ``bits`` mask (training with ``p`` > 0 assumed):
    an attention kernel then applies it itself instead of a fused kernel's own dropout."""
    return p > 0.0 and masks == "bits" and x.device.type == "cpu" and not torch.compiler.is_compiling()


class Dropout(nn.Module):
    """:func:`dropout` as a module, active in training mode (as ``torch.nn.Dropout``).

    Args:
        p: drop probability in [0, 1).
        masks: ``bits`` or ``bernoulli`` (``model.dropout_masks``).
    """

    def __init__(self, p: float, masks: str = "bits"):
        super().__init__()
        if masks not in DROPOUT_MASKS:
            raise ValueError(f"unknown dropout masks {masks!r}; allowed: {', '.join(DROPOUT_MASKS)}")
        self.p, self.masks = p, masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training, self.masks)

    def extra_repr(self) -> str:
        return f"p={self.p}, masks={self.masks}"
