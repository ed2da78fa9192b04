"""The training objective: what one batch costs, as named terms.

:class:`Objective` returns ``(total, terms, n_tokens)``: the total to backpropagate, a dict of
named terms (``xent`` today, each summed over the batch's real target tokens) and the number of
those tokens. The trainer normalises every term the same way (by the target tokens of the whole
update), sums each across accumulated batches and processes, and logs it by name
(``{name}_loss``, ``val_{name}_loss`` in ``metrics.jsonl``): a new loss term is one more entry in
the dict and, when weighted, one more summand of the total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mt.batching import Batch
from mt.device import autocast
from mt.model import Transformer


class Objective(torch.nn.Module):
    """Label-smoothed cross-entropy of a :class:`~mt.model.Transformer` on teacher-forced
    batches, plus the guided-alignment term when it is switched on.

    A module, so that DistributedDataParallel and ``torch.compile`` can wrap one ``forward``.
    The vocabulary projection runs only on non-pad target positions.

    The alignment term (Garg et al. 2019, "Jointly Learning to Align and Translate with
    Transformer Models", §4): with A the average cross-attention of the first
    ``alignment_heads`` heads of decoder layer ``alignment_layer`` and G̃ the batch's gold
    alignment (``Batch.alignment``: each linked target piece's row sums to 1),
    ``align = Σ_t Σ_s G̃[t, s] · (−log A[t, s])``, summed over the batch like the cross-entropy;
    the total is ``xent + alignment_weight · align``.

    Args:
        model: the model being trained.
        label_smoothing: epsilon of the smoothed target distribution (Szegedy et al. 2016);
            0 = plain cross-entropy.
        alignment_weight: λ of the alignment term; 0 = off (then no attention weights are
            computed).
        alignment_layer: the supervised decoder layer (0-based, negative from the top).
        alignment_heads: how many heads of that layer (the first ones) are supervised.
        full_context: read the supervised weights from a pass without the future mask
            (:meth:`mt.model.Transformer.decode_with_alignment`).
    """

    def __init__(
        self,
        model: Transformer,
        label_smoothing: float,
        alignment_weight: float = 0.0,
        alignment_layer: int = -2,
        alignment_heads: int = 1,
        full_context: bool = False,
    ):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.alignment_weight = alignment_weight
        self.alignment_layer = alignment_layer
        self.alignment_heads = alignment_heads
        self.full_context = full_context

    def forward(
        self,
        src_ids: torch.Tensor,
        tgt_in: torch.Tensor,
        tgt_out: torch.Tensor,
        alignment: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """One batch's loss.

        Args:
            src_ids: (batch, src_len) long, source pieces then EOS, right-padded.
            tgt_in: (batch, tgt_len) long, BOS then target pieces (decoder input).
            tgt_out: (batch, tgt_len) long, target pieces then EOS (what is predicted), pad
                where ``tgt_in`` is padded.
            alignment: (batch, tgt_len, src_len) float G̃ (see class doc), or None: no
                alignment term for this batch.

        Returns: (total, terms, n_tokens): ``total`` the 0-dim float32 tensor to backpropagate;
            ``terms`` ``{"xent": summed cross-entropy in nats}`` and, when guided,
            ``"align"``: the summed alignment loss (nats); ``n_tokens`` the real target tokens
            (EOS included).
        """
        memory, src_mask = self.model.encode(src_ids)
        guided = self.alignment_weight > 0 and alignment is not None
        if guided:
            hidden, weights = self.model.decode_with_alignment(
                tgt_in, memory, src_mask, self.alignment_layer, self.full_context
            )  # weights: (batch, n_heads, tgt_len, src_len)
        else:
            hidden, _ = self.model.decode(tgt_in, memory, src_mask)  # (batch, tgt_len, d_model)
        real = tgt_out != self.model.pad_id  # (batch, tgt_len)
        logits = self.model.logits(hidden[real])  # (n_tokens, tgt_vocab)
        xent = F.cross_entropy(logits.float(), tgt_out[real], label_smoothing=self.label_smoothing, reduction="sum")
        terms = {"xent": xent}
        total = xent
        if guided:
            terms["align"] = alignment_loss(weights[:, : self.alignment_heads].float().mean(1), alignment)
            total = xent + self.alignment_weight * terms["align"]
        return total, terms, int(real.sum())


def alignment_loss(attention: torch.Tensor, alignment: torch.Tensor) -> torch.Tensor:
    """Σ_b Σ_t Σ_s G̃[b, t, s] · (−log A[b, t, s]): the cross-entropy of the attention against
    the gold alignment (Garg et al. 2019, eq. 4), summed over target pieces.

    Args:
        attention: (batch, tgt_len, src_len) A, rows sum to 1 over real source pieces.
        alignment: (batch, tgt_len, src_len) G̃, linked rows sum to 1, others all zero.

    Returns: a 0-dim tensor in nats; rows without links add nothing.
    """
    # padded source columns have A = 0 and G̃ = 0: clamp so that 0 · log 0 is 0, not nan
    return -(alignment * attention.clamp_min(1e-9).log()).sum()


def sequence_loss(model: Transformer, batch: Batch, label_smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed label-smoothed cross-entropy over the batch's real target tokens.

    Returns: (loss summed over tokens, a 0-dim float32 tensor; number of target tokens).
    """
    _, terms, n_tokens = Objective(model, label_smoothing)(batch.src_ids, batch.tgt_in, batch.tgt_out)
    return terms["xent"], n_tokens


@torch.inference_mode()
def validation_losses(
    model: Transformer, batches: list[Batch], device: torch.device, precision: str
) -> dict[str, float]:
    """Every term of the unsmoothed objective per target token over the validation batches.

    Returns: ``{name: nats per target token}``, e.g. ``{"xent": 2.31}``.
    """
    model.eval()
    objective = Objective(model, label_smoothing=0.0)
    sums: dict[str, float] = {}
    tokens = 0
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, precision):
            _, terms, n = objective(batch.src_ids, batch.tgt_in, batch.tgt_out)
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value)
        tokens += n
    return {name: value / max(tokens, 1) for name, value in sums.items()}
