"""The encoder-decoder Transformer: embed → encode() → decode() → logits(). No loss, no search."""

from __future__ import annotations

import math

import torch
from torch import nn

from mt.model.aligner import Aligner, target_pieces
from mt.model.attention import Cache, KVCache
from mt.model.dropout import Dropout
from mt.config import ModelConfig
from mt.model.layers import DecoderLayer, EncoderLayer, sinusoidal_positions
from mt.data.tokenizer import EOS_ID

DecoderCache = list[dict[str, Cache]]


class Transformer(nn.Module):
    """Encoder-decoder Transformer (Vaswani et al. 2017) with pre-norm layers.

    Args:
        cfg: the ``model`` config node.
        src_vocab_size, tgt_vocab_size: vocabulary sizes in pieces (equal when the
            embeddings are shared).
        pad_id: padding id of both vocabularies; its embedding is zero and never updated.

    Raises:
        ValueError: ``share_embeddings`` with different vocabulary sizes.
    """

    def __init__(self, cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int, pad_id: int):
        super().__init__()
        if cfg.share_embeddings and src_vocab_size != tgt_vocab_size:
            raise ValueError(f"share_embeddings needs one vocabulary, got {src_vocab_size} and {tgt_vocab_size}")
        self.cfg = cfg
        self.pad_id = pad_id
        self.src_embedding = nn.Embedding(src_vocab_size, cfg.d_model, padding_idx=pad_id)
        self.tgt_embedding = (
            self.src_embedding if cfg.share_embeddings else nn.Embedding(tgt_vocab_size, cfg.d_model, padding_idx=pad_id)
        )
        # absolute positions added to the embeddings; rope (per attention site) adds relative ones
        self.learned_positions = None
        if cfg.positional_embedding == "learned":
            self.learned_positions = nn.Embedding(cfg.max_positions, cfg.d_model)
        elif cfg.positional_embedding == "sinusoidal":
            self.register_buffer("positions", sinusoidal_positions(cfg.max_positions, cfg.d_model), persistent=False)
        self.embedding_dropout = Dropout(cfg.dropout, cfg.dropout_masks)
        self.encoder_layers = nn.ModuleList(
            EncoderLayer(
                cfg.d_model,
                cfg.ffn_dim,
                cfg.dropout,
                cfg.ffn_dropout,
                cfg.activation,
                cfg.encoder.self_attention,
                cfg.dropout_masks,
            )
            for _ in range(cfg.encoder.n_layers)
        )
        self.encoder_norm = nn.LayerNorm(cfg.d_model)
        self.decoder_layers = nn.ModuleList(
            DecoderLayer(
                cfg.d_model,
                cfg.ffn_dim,
                cfg.dropout,
                cfg.ffn_dropout,
                cfg.activation,
                cfg.decoder.self_attention,
                cfg.decoder.cross_attention,
                cfg.dropout_masks,
            )
            for _ in range(cfg.decoder.n_layers)
        )
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        self.output_proj = nn.Linear(cfg.d_model, tgt_vocab_size, bias=False)
        # the word aligner on top (mt/model/aligner.py), reading the embeddings and every layer's output
        self.aligner = (
            Aligner(
                cfg.aligner,
                cfg.d_model,
                cfg.encoder.n_layers + 1,
                cfg.decoder.n_layers + 1,
                src_vocab_size,
                tgt_vocab_size,
                cfg.dropout_masks,
            )
            if cfg.aligner.enabled
            else None
        )
        self._init_parameters()
        if cfg.tie_output:
            self.output_proj.weight = self.tgt_embedding.weight  # (Press & Wolf 2017)

    def _init_parameters(self) -> None:
        for name, parameter in self.named_parameters():
            if parameter.dim() > 1 and "embedding" not in name and "positions" not in name:
                nn.init.xavier_uniform_(parameter)
        for embedding in {self.src_embedding, self.tgt_embedding}:
            # N(0, d_model^-1/2) so that the sqrt(d_model) scaling gives unit variance (fairseq)
            nn.init.normal_(embedding.weight, mean=0.0, std=self.cfg.d_model**-0.5)
            nn.init.zeros_(embedding.weight[self.pad_id])
        if self.learned_positions is not None:
            nn.init.normal_(self.learned_positions.weight, mean=0.0, std=self.cfg.d_model**-0.5)  # (fairseq)

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """ids: (batch, len) → (batch, len, d_model), positions start at ``offset``."""
        length = ids.size(1)
        if offset + length > self.cfg.max_positions:
            raise ValueError(f"sequence of {offset + length} tokens exceeds model.max_positions={self.cfg.max_positions}")
        # scale embeddings by sqrt(d_model) (Vaswani et al. 2017, §3.4)
        x = embedding(ids) * math.sqrt(self.cfg.d_model)
        if self.learned_positions is not None:
            x = x + self.learned_positions.weight[offset : offset + length]
        elif self.cfg.positional_embedding == "sinusoidal":
            x = x + self.positions[offset : offset + length]
        return self.embedding_dropout(x)

    def encode(self, src_ids: torch.Tensor, states: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder.

        Args:
            src_ids: (batch, src_len) long, right-padded with ``pad_id``, each row ending in EOS.
            states: a list to receive what :meth:`layer_states` returns as ``src_states`` (the
                embedded source, each layer's output, the last = memory), e.g. for the aligner
                to reuse a search's encoder pass; None = keep nothing.

        Returns:
            memory: (batch, src_len, d_model) encoder output (final layer norm applied).
            src_mask: (batch, src_len) bool, True = real source token.
        """
        src_mask = src_ids != self.pad_id  # (batch, src_len)
        x = self._embed(self.src_embedding, src_ids)
        kept = [x]
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
            kept.append(x)
        memory = kept[-1] = self.encoder_norm(x)
        if states is not None:
            states.extend(kept)
        return memory, src_mask

    def new_cache(self) -> DecoderCache:
        """An empty incremental-decoding cache: one dict per decoder layer and attention site."""
        return [{"self_attention": {}, "cross_attention": {}} for _ in self.decoder_layers]

    def decode(
        self,
        tgt_in: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor,
        cache: DecoderCache | None = None,
        need_weights: bool = False,
        group: int = 1,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the decoder over target inputs (BOS + target tokens, teacher forcing).

        Args:
            tgt_in: (batch, tgt_len) long decoder inputs. With a cache, only the new positions
                (usually tgt_len = 1); positions continue after those already cached.
            memory: (batch, src_len, d_model) from :meth:`encode`.
            src_mask: (batch, src_len) bool from :meth:`encode`.
            cache: from :meth:`new_cache`, updated in place; None = no incremental state.
            need_weights: also return each layer's cross-attention weights.
            group: each ``group`` consecutive rows of ``tgt_in`` share one row of ``memory`` and
                ``src_mask``, which then have ``batch / group`` rows (the beams of a sentence in
                beam search: the source keys and values are kept and read once per sentence).

        Returns:
            hidden: (batch, tgt_len, d_model) final decoder states (layer norm applied).
            cross_weights: per decoder layer (batch, n_heads, tgt_len, src_len), rows sum to 1
                over real source positions; empty unless ``need_weights``.
        """
        offset = 0
        if cache is not None and "kv" in cache[0]["self_attention"]:
            offset = cache[0]["self_attention"]["kv"].length
        x = self._embed(self.tgt_embedding, tgt_in, offset)
        cross_weights = []
        for i, layer in enumerate(self.decoder_layers):
            x, weights = layer(x, memory, src_mask, cache[i] if cache is not None else None, need_weights, group=group)
            if need_weights:
                cross_weights.append(weights)
        return self.decoder_norm(x), cross_weights

    def decode_with_alignment(
        self, tgt_in: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor, layer: int, full_context: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced decoding that also returns the cross-attention of one decoder layer,
        the layer a guided-alignment loss supervises (Garg et al. 2019, §4).

        Only that layer computes its weights; the others keep the fused attention kernel.

        Args:
            tgt_in, memory, src_mask: as :meth:`decode` (no cache).
            layer: 0-based decoder layer; negative counts from the top (-1 = last).
            full_context: take the weights from an extra pass of that layer over the same
                input states without the future mask, so that target position t sees the whole
                target (Garg et al. 2019's full-context alignment); the decoding itself stays causal.

        Returns:
            hidden: (batch, tgt_len, d_model), exactly :meth:`decode`'s.
            weights: (batch, n_heads, tgt_len, src_len), rows sum to 1 over real source positions.
        """
        layer = range(len(self.decoder_layers))[layer]  # IndexError for a layer the decoder lacks
        x = self._embed(self.tgt_embedding, tgt_in)
        weights = None
        for i, decoder_layer in enumerate(self.decoder_layers):
            if i == layer and full_context:
                _, weights = decoder_layer(
                    x, memory, src_mask, need_weights=True, full_context=True, tgt_mask=tgt_in != self.pad_id
                )
            x, layer_weights = decoder_layer(x, memory, src_mask, need_weights=i == layer and not full_context)
            if i == layer and not full_context:
                weights = layer_weights
        return self.decoder_norm(x), weights

    def layer_states(
        self, src_ids: torch.Tensor, tgt_in: torch.Tensor, src_states: list[torch.Tensor] | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """Teacher-forced pass that keeps every layer's output (what the aligner reads).

        Args:
            src_ids, tgt_in: as :meth:`encode` and :meth:`decode`.
            src_states: the source side already computed (:meth:`encode`'s ``states`` for these
                ``src_ids``): the encoder does not run again.

        Returns:
            src_states: n_encoder_layers + 1 tensors (batch, src_len, d_model): the embedded
                source, then each encoder layer's output, the last with the final layer norm
                (= :meth:`encode`'s memory).
            src_mask: (batch, src_len) bool, True = real source token.
            tgt_states: n_decoder_layers + 1 tensors (batch, tgt_len, d_model), likewise; the
                last is :meth:`decode`'s hidden.
        """
        if src_states is None:
            src_states = []
            memory, src_mask = self.encode(src_ids, src_states)
        else:
            memory, src_mask = src_states[-1], src_ids != self.pad_id
        y = self._embed(self.tgt_embedding, tgt_in)
        tgt_states = [y]
        for layer in self.decoder_layers:
            y, _ = layer(y, memory, src_mask)
            tgt_states.append(y)
        tgt_states[-1] = self.decoder_norm(y)
        return src_states, src_mask, tgt_states

    def aligner_attention(
        self, src_ids: torch.Tensor, tgt_in: torch.Tensor, src_states: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """The aligner's alignment of a teacher-forced batch, the translation model run without
        gradients (it is frozen, or the aligner must not change it).

        Args:
            src_ids, tgt_in: as :meth:`encode` and :meth:`decode`.
            src_states: as :meth:`layer_states`.

        Returns: (batch, tgt_len, src_len) float32, row t the alignment of the piece predicted
            at row t; rows sum to 1 over real source positions.

        Raises:
            ValueError: the model has no aligner (``model.aligner.enabled``).
        """
        if self.aligner is None:
            raise ValueError("this model has no aligner (train one: mt-train experiment=align train.init_from=RUN_DIR)")
        with torch.no_grad():
            src_states, src_mask, tgt_states = self.layer_states(src_ids, tgt_in, src_states)
        tgt_out = target_pieces(tgt_in, self.pad_id, EOS_ID)
        return self.aligner(src_states, src_mask, tgt_states, tgt_in != self.pad_id, src_ids, tgt_out)

    def translation_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Every named parameter but the aligner's: what ``train.trainable=alignment`` freezes."""
        return [(name, p) for name, p in self.named_parameters() if not name.startswith("aligner.")]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (..., d_model) → (..., tgt_vocab) unnormalised scores."""
        return self.output_proj(hidden)

    def forward(self, src_ids: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits: (batch, src_len), (batch, tgt_len) → (batch, tgt_len, tgt_vocab)."""
        memory, src_mask = self.encode(src_ids)
        hidden, _ = self.decode(tgt_in, memory, src_mask)
        return self.logits(hidden)


def reorder_cache(
    cache: DecoderCache, order: torch.Tensor, sites: tuple[str, ...] = ("self_attention", "cross_attention")
) -> None:
    """Select/reorder the batch rows of the cached tensors of ``sites`` in place (beam search).

    Args:
        cache: from :meth:`Transformer.new_cache`.
        order: (new_batch,) long, row indices into the current batch of those sites.
        sites: which attention sites; beam search reorders the self-attention rows by beam and
            the cross-attention rows (one per sentence) only when sentences leave the batch.
    """
    for layer_cache in cache:
        for site in sites:
            for name, entry in layer_cache[site].items():
                if isinstance(entry, KVCache):
                    entry.reorder(order)
                else:
                    layer_cache[site][name] = entry.index_select(0, order)
