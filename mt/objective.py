"""The training objective: what one batch costs, as named terms.

:class:`Objective` returns ``(total, terms, n_tokens)``: the total to backpropagate, a dict of
named terms (``xent`` today, each summed over the batch's real target tokens) and the number of
those tokens. The trainer normalises every term the same way (by the target tokens of the whole
update), sums each across accumulated batches and processes, and logs it by name
(``train_{name}``, ``val_{name}`` in ``metrics.jsonl``): a new loss term is one more entry in
the dict and, when weighted, one more summand of the total.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mt.batching import Batch
from mt.device import autocast
from mt.model import Transformer


class Objective(torch.nn.Module):
    """Label-smoothed cross-entropy of a :class:`~mt.model.Transformer` on teacher-forced batches.

    A module, so that DistributedDataParallel and ``torch.compile`` can wrap one ``forward``.
    The vocabulary projection runs only on non-pad target positions.

    Args:
        model: the model being trained.
        label_smoothing: epsilon of the smoothed target distribution (Szegedy et al. 2016);
            0 = plain cross-entropy.
    """

    def __init__(self, model: Transformer, label_smoothing: float):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing

    def forward(
        self, src_ids: torch.Tensor, tgt_in: torch.Tensor, tgt_out: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """One batch's loss.

        Args:
            src_ids: (batch, src_len) long, source pieces then EOS, right-padded.
            tgt_in: (batch, tgt_len) long, BOS then target pieces (decoder input).
            tgt_out: (batch, tgt_len) long, target pieces then EOS (what is predicted), pad
                where ``tgt_in`` is padded.

        Returns: (total, terms, n_tokens): ``total`` the 0-dim float32 tensor to backpropagate;
            ``terms`` ``{"xent": summed cross-entropy in nats}``; ``n_tokens`` the real target
            tokens (EOS included).
        """
        memory, src_mask = self.model.encode(src_ids)
        hidden, _ = self.model.decode(tgt_in, memory, src_mask)  # (batch, tgt_len, d_model)
        real = tgt_out != self.model.pad_id  # (batch, tgt_len)
        logits = self.model.logits(hidden[real])  # (n_tokens, tgt_vocab)
        xent = F.cross_entropy(logits.float(), tgt_out[real], label_smoothing=self.label_smoothing, reduction="sum")
        terms = {"xent": xent}
        return xent, terms, int(real.sum())


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
