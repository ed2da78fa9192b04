"""The training objective: what one batch costs, as named terms.

:class:`Objective` returns ``(total, terms, n_tokens)``: the total to backpropagate, a dict of
named terms (``xent``, and ``align`` when switched on, each summed over the batch's
real target tokens) and the number of those tokens. The trainer normalises every term the same
way (by the target tokens of the whole update), sums each across accumulated batches and
processes, and logs it by name (``{name}_loss``, ``val_{name}_loss`` in ``metrics.jsonl``): a new
loss term is one more entry in the dict and, when weighted, one more summand of the total.
"""

from __future__ import annotations

import contextlib

import torch

from mt.model.aligner import null_targets
from mt.data.batching import Batch
from mt.data.tokenizer import Tokenizer
from mt.device import autocast
from mt.model.transformer import Transformer


class Objective(torch.nn.Module):
    """Label-smoothed cross-entropy of a :class:`~mt.model.transformer.Transformer` on teacher-forced
    batches, plus the guided-alignment term when it is switched on.

    A module, so that DistributedDataParallel and ``torch.compile`` can wrap one ``forward``.
    The vocabulary projection runs only on non-pad target positions, and together with the
    cross-entropy a chunk of them at a time (:func:`linear_cross_entropy`).

    The alignment term (Garg et al. 2019, "Jointly Learning to Align and Translate with
    Transformer Models", §4): with A the average cross-attention of the first
    ``alignment_heads`` heads of decoder layer ``alignment_layer`` and G̃ the batch's gold
    alignment (``Batch.alignment``: each linked target piece's row sums to 1),
    ``align = Σ_t Σ_s G̃[t, s] · (−log A[t, s])``, summed over the batch like the cross-entropy;
    the total is ``xent + alignment_weight · align``.

    With an aligner (``model.aligner``, :mod:`mt.model.aligner`) the alignment term is the aligner's
    instead, on its own attention and with its inputs detached, so that it never changes the
    translation model; ``frozen`` (``train.trainable=alignment``) runs the translation model
    without gradients and drops the cross-entropy: the total is ``alignment_weight · align``.

    Args:
        model: the model being trained.
        label_smoothing: epsilon of the smoothed target distribution (Szegedy et al. 2016);
            0 = plain cross-entropy.
        alignment_weight: λ of the alignment term; 0 = off (then no attention weights are
            computed).
        alignment_layer: the supervised decoder layer (0-based, negative from the top).
        alignment_heads: how many heads of that layer (the first ones) are supervised.
        full_context: read the supervised weights from a pass without the future mask
            (:meth:`mt.model.transformer.Transformer.decode_with_alignment`).
        frozen: only the aligner learns (see above).
        partner: the other direction's model with an aligner (``train.agreement_with``),
            frozen; with ``agreement_weight`` > 0 the aligner's term gets the agreement term
            ``agree`` (:func:`agreement_loss`) against the partner's aligner on the swapped
            pair, and the total ``agreement_weight · agree`` more.
        agreement_weight: λ of the agreement term.
    """

    def __init__(
        self,
        model: Transformer,
        label_smoothing: float,
        alignment_weight: float = 0.0,
        alignment_layer: int = -2,
        alignment_heads: int = 1,
        full_context: bool = False,
        frozen: bool = False,
        partner: Transformer | None = None,
        agreement_weight: float = 0.0,
    ):
        super().__init__()
        self.partner = partner
        self.agreement_weight = agreement_weight
        self.model = model
        self.label_smoothing = label_smoothing
        self.alignment_weight = alignment_weight
        self.alignment_layer = alignment_layer
        self.alignment_heads = alignment_heads
        self.full_context = full_context
        self.frozen = frozen

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
            ``"align"``: the summed alignment loss (nats), and with a partner ``"agree"``: the
            summed squared disagreement (:func:`agreement_loss`); ``n_tokens`` the real target
            tokens (EOS included).
        """
        guided = self.alignment_weight > 0 and alignment is not None
        real = tgt_out != self.model.pad_id  # (batch, tgt_len)
        if guided and self.model.aligner is not None:
            return self._aligner_loss(src_ids, tgt_in, tgt_out, alignment, real)
        memory, src_mask = self.model.encode(src_ids)
        if guided:
            hidden, weights = self.model.decode_with_alignment(
                tgt_in, memory, src_mask, self.alignment_layer, self.full_context
            )  # weights: (batch, n_heads, tgt_len, src_len)
        else:
            hidden, _ = self.model.decode(tgt_in, memory, src_mask)  # (batch, tgt_len, d_model)
        xent = linear_cross_entropy(hidden[real], self.model.output_proj.weight, tgt_out[real], self.label_smoothing)
        terms = {"xent": xent}
        total = xent
        if guided:
            terms["align"] = alignment_loss(weights[:, : self.alignment_heads].float().mean(1), alignment)
            total = xent + self.alignment_weight * terms["align"]
        return total, terms, int(real.sum())

    def _aligner_loss(self, src_ids, tgt_in, tgt_out, alignment, real):
        """The aligner's term (and, unless frozen, the cross-entropy from the same pass)."""
        with torch.no_grad() if self.frozen else contextlib.nullcontext():
            src_states, src_mask, tgt_states = self.model.layer_states(src_ids, tgt_in)
        if self.model.cfg.aligner.null:  # unlinked pieces learn to attend to EOS (NULL)
            alignment = null_targets(alignment, src_mask, real)
        weights = self.model.aligner(src_states, src_mask, tgt_states, tgt_in != self.model.pad_id, src_ids, tgt_out)
        terms = {"align": alignment_loss(weights, alignment)}
        total = self.alignment_weight * terms["align"]
        if self.partner is not None and self.agreement_weight > 0:
            reverse = partner_alignment(self.partner, src_ids, tgt_out)  # (batch, src_len, tgt_len)
            terms["agree"] = agreement_loss(weights, reverse, src_ids, tgt_out)
            total = total + self.agreement_weight * terms["agree"]
        if self.frozen:
            return total, terms, int(real.sum())
        hidden = tgt_states[-1]  # (batch, tgt_len, d_model)
        xent = linear_cross_entropy(hidden[real], self.model.output_proj.weight, tgt_out[real], self.label_smoothing)
        return xent + total, {"xent": xent, **terms}, int(real.sum())


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0, chunk_elements: int = 2**23
) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, target, label_smoothing=ε, reduction="sum")``, computed
    a chunk of rows at a time so that no (tokens × vocabulary) matrix is ever held whole.

    The loss of one row with logits z, its target y and vocabulary size V is PyTorch's
    label-smoothed cross-entropy (Szegedy et al. 2016, §7), written through ``lse = logsumexp(z)``
    so that no log-softmax is stored: ``(1 − ε)·(lse − z_y) + ε·(lse − mean(z))``. When a gradient
    is needed, each chunk's gradient is taken at once, while its logits exist (``softmax(z) − q``
    with q the smoothed one-hot target, then through the projection), and only the gradients of
    ``hidden`` and ``weight`` are kept for the backward pass (the fused linear + cross-entropy of
    Liger-Kernel, Hsu et al. 2024). The projection runs in autocast's dtype when autocast is on
    (as ``F.linear`` would), the softmax and the loss in float32.

    Memory: two (rows × V) matrices of a chunk, ``chunk_elements`` float32 numbers (32 MiB) and
    their copy in the projection's dtype, instead of several (tokens × V) ones (131 MB each at
    4,096 tokens and 8,000 pieces), plus (tokens × d_model) and (V × d_model) float32 gradients.

    Args:
        hidden: (tokens, d_model) decoder states of the predicted positions.
        weight: (V, d_model) the output projection (``nn.Linear(d_model, V, bias=False).weight``).
        target: (tokens,) long, ids in [0, V).
        label_smoothing: ε in [0, 1].
        chunk_elements: rows × V per chunk (at least one row).

    Returns: the summed loss, a 0-dim float32 tensor (in nats).
    """
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    needs_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunk_size = max(1, chunk_elements // weight.size(0))  # rows
    with torch.autocast(device_type, enabled=False):
        if needs_grad:
            return _LinearCrossEntropy.apply(hidden, weight, target, label_smoothing, chunk_size, dtype)
        return _chunked_loss(hidden.detach(), weight.detach(), target, label_smoothing, chunk_size, dtype, False)[0]


def _chunked_loss(hidden, weight, target, label_smoothing, chunk_size, dtype, with_grad):
    """The loss and, ``with_grad``, its gradients with respect to ``hidden`` and ``weight``
    (float32, unscaled); see :func:`linear_cross_entropy`.

    Each chunk's (rows × V) float32 logits are worked on in place: shifted by the row's maximum
    m, exponentiated once (``e = exp(z − m)``), summed (``lse = m + log Σe``, what
    ``torch.logsumexp`` computes) and, for the gradient, divided by that sum (softmax).
    """
    vocab = weight.size(0)
    weight_c = weight.to(dtype)
    loss = hidden.new_zeros((), dtype=torch.float32)
    grad_hidden = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if with_grad else None
    grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
    # one (rows × V) buffer per dtype for all chunks, worked on in place: the logits (then the
    # gradient) in the projection's dtype, and their float32 copy. Fresh ones per chunk are fresh
    # pages: converting a 1,048 × 8,000 chunk took 10–15 ms into new memory, 2.3 ms into these
    # buffers (bf16 training, 2-core AMD EPYC)
    rows = min(chunk_size, hidden.size(0))
    buffer_c = torch.empty((rows, vocab), dtype=dtype, device=hidden.device)
    buffer = buffer_c if dtype == torch.float32 else torch.empty_like(buffer_c, dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk_size):
        h = hidden[start : start + chunk_size].to(dtype)  # (rows, d_model)
        y = target[start : start + chunk_size]
        n = h.size(0)
        z_c = torch.mm(h, weight_c.T, out=buffer_c[:n])  # (rows, V) logits
        z = z_c if buffer is buffer_c else buffer[:n].copy_(z_c)  # float32
        z_max = z.amax(dim=1, keepdim=True)  # (rows, 1)
        z_y = z.gather(1, y[:, None]).squeeze(1)  # (rows,)
        z_mean = z.mean(1) if label_smoothing else None
        e = z.sub_(z_max).exp_()  # exp(z − m), in z's memory
        e_sum = e.sum(1)  # (rows,)
        lse = z_max.squeeze(1) + e_sum.log()
        rows_loss = (1 - label_smoothing) * (lse - z_y)
        if label_smoothing:
            rows_loss = rows_loss + label_smoothing * (lse - z_mean)
        loss += rows_loss.sum()
        if with_grad:  # ∂loss/∂z = softmax(z) − q, q = (1 − ε)·onehot(y) + ε/V
            g = e.div_(e_sum[:, None])
            g.scatter_add_(1, y[:, None], g.new_full((n, 1), -(1 - label_smoothing)))
            if label_smoothing:
                g.sub_(label_smoothing / vocab)
            g = g if g is z_c else z_c.copy_(g)  # in the projection's dtype
            grad_hidden[start : start + n] = g @ weight_c
            grad_weight += (g.T @ h).float()
    return loss, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """:func:`linear_cross_entropy` with its gradients taken in the forward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, target, label_smoothing, chunk_size, dtype):
        loss, grad_hidden, grad_weight = _chunked_loss(hidden, weight, target, label_smoothing, chunk_size, dtype, True)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = hidden.dtype, weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (grad_hidden * grad_loss).to(hidden_dtype), (grad_weight * grad_loss).to(weight_dtype), None, None, None, None


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


def swapped_pair(
    src_ids: torch.Tensor, tgt_out: torch.Tensor, pad_id: int = Tokenizer.pad_id, bos_id: int = Tokenizer.bos_id,
    eos_id: int = Tokenizer.eos_id,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch the other direction's model reads for the same pairs.

    Args:
        src_ids: (batch, src_len) source pieces + EOS, right-padded.
        tgt_out: (batch, tgt_len) target pieces + EOS, right-padded.

    Returns: its (src_ids, tgt_in): ``tgt_out`` itself, (batch, tgt_len); BOS + the source
        pieces, right-padded, (batch, src_len).
    """
    pieces = src_ids.masked_fill(src_ids == eos_id, pad_id)[:, :-1]  # (batch, src_len - 1)
    bos = torch.full_like(src_ids[:, :1], bos_id)
    return tgt_out, torch.cat([bos, pieces], dim=1)


@torch.no_grad()
def partner_alignment(partner: Transformer, src_ids: torch.Tensor, tgt_out: torch.Tensor) -> torch.Tensor:
    """The other direction's aligner on the swapped pairs (:func:`swapped_pair`).

    Args:
        partner: a model translating target → source, with an aligner.
        src_ids, tgt_out: as :meth:`Objective.forward` takes them.

    Returns: (batch, src_len, tgt_len) float32: row s is the alignment of source piece s (EOS
        last) over the target pieces and EOS.
    """
    return partner.aligner_attention(*swapped_pair(src_ids, tgt_out, partner.pad_id))


def agreement_loss(
    forward: torch.Tensor, reverse: torch.Tensor, src_ids: torch.Tensor, tgt_out: torch.Tensor,
    pad_id: int = Tokenizer.pad_id, eos_id: int = Tokenizer.eos_id,
) -> torch.Tensor:
    """Σ_b Σ_t Σ_s (F[b, t, s] − R[b, s, t])² over real pieces (EOS and padding left out): how far
    two directions' alignment matrices of the same pairs disagree (the agreement loss of
    Mask-Align, Chen et al. 2021, "Mask-Align: Self-Supervised Neural Word Alignment", ACL §3.3;
    after Liang, Taskar & Klein 2006, "Alignment by Agreement").

    Args:
        forward: (batch, tgt_len, src_len) F, this direction's aligner (rows: target pieces).
        reverse: (batch, src_len, tgt_len) R, the other direction's (rows: source pieces).
        src_ids: (batch, src_len) source pieces + EOS, right-padded.
        tgt_out: (batch, tgt_len) target pieces + EOS, right-padded.

    Returns: a 0-dim float32 tensor.
    """
    real_src = (src_ids != pad_id) & (src_ids != eos_id)  # (batch, src_len)
    real_tgt = (tgt_out != pad_id) & (tgt_out != eos_id)  # (batch, tgt_len)
    both = real_tgt[:, :, None] & real_src[:, None, :]  # (batch, tgt_len, src_len)
    difference = forward.float() - reverse.float().transpose(1, 2)
    return (difference.square() * both).sum()


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
