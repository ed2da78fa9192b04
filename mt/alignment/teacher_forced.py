"""Teacher-forced passes over (source, target) pairs: the attention matrices every alignment
method reads (:mod:`mt.alignment.align`).

Teacher-forced over a pair with target pieces y_1..y_n, decoder row t (t = 0..n) has input
y_t (y_0 = BOS) and predicts y_{t+1} (y_{n+1} = EOS). Pairs run in length-sorted batches of
about :data:`TEACHER_FORCED_TOKENS` padded positions per side.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mt.data.batching import pad
from mt.data.tokenizer import Tokenizer
from mt.data.words import Segmentation, segment
from mt.model.transformer import Transformer


TEACHER_FORCED_TOKENS = 1024  # padded positions per side and batch: long pairs do not pad short ones


def _teacher_forced_batches(src_ids, tgt_ids, batch_size: int, device, progress: bool):
    """Length-sorted batches of at most ``batch_size`` pairs and about
    :data:`TEACHER_FORCED_TOKENS` padded positions per side: (pair indices, src (batch,
    src_len + 1) with EOS, tgt_in (batch, tgt_len + 1) with BOS), on ``device``."""
    from tqdm.auto import tqdm

    bos, eos = Tokenizer.bos_id, Tokenizer.eos_id
    order = sorted(range(len(src_ids)), key=lambda k: (len(tgt_ids[k]), len(src_ids[k])))
    batches: list[list[int]] = []
    longest = 0
    for k in order:
        size = max(len(src_ids[k]), len(tgt_ids[k])) + 1
        if batches and len(batches[-1]) < batch_size and max(longest, size) * (len(batches[-1]) + 1) <= TEACHER_FORCED_TOKENS:
            batches[-1].append(k)
            longest = max(longest, size)
        else:
            batches.append([k])
            longest = size
    for batch in tqdm(batches, desc="align", unit="batch", disable=None if progress else True, leave=False):
        src = pad([[*src_ids[k], eos] for k in batch]).to(device)
        tgt_in = pad([[bos, *tgt_ids[k]] for k in batch]).to(device)
        yield batch, src, tgt_in


@torch.inference_mode()
def teacher_forced_aligner(
    model: Transformer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    encoder_states: Sequence[list[torch.Tensor] | None] | None = None,
) -> list[np.ndarray]:
    """The aligner's alignment of each pair (:meth:`mt.model.transformer.Transformer.aligner_attention`).

    Args: as :func:`teacher_forced_attention`, and
        encoder_states: per pair, the encoder's outputs for its source already (e.g. by the
            search, :meth:`mt.model.transformer.Transformer.encode`): n_encoder_layers + 1 tensors
            (len(src) + 1, d_model), or None; a batch whose pairs all have them skips the encoder.

    Returns: per pair, (len(tgt) + 1, len(src) + 1) float32: row t for the piece predicted at
        decoder row t (y_1..y_n, EOS); columns the source pieces and EOS; rows sum to 1.

    Raises:
        ValueError: the model has no aligner.
    """
    model.eval()
    out: list[np.ndarray] = [np.zeros(0)] * len(src_ids)
    for batch, src, tgt_in in _teacher_forced_batches(src_ids, tgt_ids, batch_size, device, progress):
        src_states = None
        if encoder_states is not None and all(encoder_states[k] is not None for k in batch):
            src_states = [  # (batch, src_len, d_model) per layer, padded with zeros as padding is masked
                torch.nn.utils.rnn.pad_sequence([encoder_states[k][layer] for k in batch], batch_first=True).to(device)
                for layer in range(len(encoder_states[batch[0]]))
            ]
        weights = model.aligner_attention(src, tgt_in, src_states).float().cpu().numpy()  # (batch, tgt_len, src_len)
        for row, k in enumerate(batch):
            out[k] = weights[row, : len(tgt_ids[k]) + 1, : len(src_ids[k]) + 1].copy()
    return out


@torch.inference_mode()
def teacher_forced_attention(
    model: Transformer,
    src_ids: Sequence[Sequence[int]],
    tgt_ids: Sequence[Sequence[int]],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    full_context_layer: int | None = None,
) -> list[np.ndarray]:
    """Cross-attention of every decoder layer and head, teacher-forced, in length-sorted batches.

    Args:
        src_ids, tgt_ids: piece ids without specials (EOS/BOS are added here).
        progress: show a tqdm bar over batches.
        full_context_layer: this layer's weights come from its pass without the future mask
            (:meth:`mt.model.transformer.Transformer.decode_with_alignment`), as guided alignment trained it.

    Returns: per pair, (n_layers, n_heads, len(tgt) + 1, len(src) + 1) float32: rows are the
        decoder inputs BOS, y_1..y_n; columns the source pieces and EOS.
    """
    model.eval()
    out: list[np.ndarray] = [np.zeros(0)] * len(src_ids)
    for batch, src, tgt_in in _teacher_forced_batches(src_ids, tgt_ids, batch_size, device, progress):
        memory, src_mask = model.encode(src)
        _, weights = model.decode(tgt_in, memory, src_mask, need_weights=True)
        if full_context_layer is not None:
            weights[full_context_layer] = model.decode_with_alignment(tgt_in, memory, src_mask, full_context_layer, True)[1]
        stacked = torch.stack(weights, dim=1).float().cpu().numpy()  # (batch, n_layers, n_heads, tgt_len, src_len)
        for row, k in enumerate(batch):
            out[k] = stacked[row, :, :, : len(tgt_ids[k]) + 1, : len(src_ids[k]) + 1].copy()
    return out


def attend(
    model: Transformer,
    tokenizer: Tokenizer,
    src_texts: Sequence[str],
    tgt_texts: Sequence[str],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    full_context_layer: int | None = None,
) -> tuple[list[Segmentation], list[np.ndarray]]:
    """Segment the pairs and run the teacher-forced passes: the inputs of every extraction.

    Returns: per pair, its :class:`Segmentation` and its (n_layers, n_heads, tgt_len + 1,
    src_len + 1) attention (see :func:`teacher_forced_attention`).

    Raises:
        ValueError: unequal numbers of texts.
    """
    if len(src_texts) != len(tgt_texts):
        raise ValueError(f"{len(src_texts)} source but {len(tgt_texts)} target sentences")
    segmentations = segment(tokenizer, src_texts, tgt_texts, model.cfg.max_positions - 1)
    return segmentations, segmented_attention(model, segmentations, batch_size, device, progress, full_context_layer)


def segmented_attention(
    model: Transformer,
    segmentations: Sequence[Segmentation],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    full_context_layer: int | None = None,
) -> list[np.ndarray]:
    """:func:`teacher_forced_attention` over already segmented pairs (their pieces)."""
    return teacher_forced_attention(
        model, *_piece_ids(segmentations), batch_size, device, progress, full_context_layer
    )


def segmented_aligner(
    model: Transformer,
    segmentations: Sequence[Segmentation],
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = False,
    encoder_states: Sequence[tuple[Sequence[int], list[torch.Tensor]] | None] | None = None,
) -> list[np.ndarray]:
    """:func:`teacher_forced_aligner` over already segmented pairs (their pieces).

    Args:
        encoder_states: per pair, (source ids with EOS, the encoder's outputs for them) from an
            earlier pass, or None; used where the ids are the segmentation's source pieces + EOS.
    """
    src_ids, tgt_ids = _piece_ids(segmentations)
    usable = None
    if encoder_states is not None:  # another tokenization (e.g. truncated otherwise) runs the encoder again
        usable = [
            pair[1] if pair is not None and list(pair[0]) == [*src, Tokenizer.eos_id] else None
            for src, pair in zip(src_ids, encoder_states)
        ]
    return teacher_forced_aligner(model, src_ids, tgt_ids, batch_size, device, progress, usable)


def _piece_ids(segmentations: Sequence[Segmentation]) -> tuple[list[list[int]], list[list[int]]]:
    return [[p.id for p in seg.src_pieces] for seg in segmentations], [[p.id for p in seg.tgt_pieces] for seg in segmentations]
