"""sentencepiece subwords (Kudo & Richardson 2018): train, load, encode, decode.

The serialized sentencepiece models travel inside every checkpoint (:meth:`Tokenizer.state`),
so inference needs nothing but the checkpoint file.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sentencepiece as spm

from mt.config import TokenizerConfig

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class Piece:
    """One subword piece of a sentence with its character span in the original text.

    Attributes:
        id: vocabulary id.
        piece: the piece string (``▁`` marks a preceding space).
        begin, end: character offsets [begin, end) of the piece's surface in the original
            text; begin == end for a piece with no surface (a lone ``▁``).
    """

    id: int
    piece: str
    begin: int
    end: int


def train_sentencepiece(texts: Iterable[str], cfg: TokenizerConfig, num_threads: int = 2) -> bytes:
    """Train one sentencepiece model on ``texts`` and return its serialized bytes.

    ``vocab_size`` is a soft limit (a small corpus may yield fewer pieces). Ids 0-3 are
    pad, unk, BOS, EOS. ``texts`` is read once, as a stream; with more of them than
    ``cfg.input_sentence_size`` sentencepiece keeps a uniform sample of that many (its own
    reservoir sampling, ``shuffle_input_sentence``, fixed seed) and trains on those only.
    """
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type=cfg.model_type,
        vocab_size=cfg.vocab_size,
        character_coverage=cfg.character_coverage,
        input_sentence_size=cfg.input_sentence_size,
        shuffle_input_sentence=True,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    return model.getvalue()


class Tokenizer:
    """Source and target sentencepiece processors (one shared model when ``joint``).

    Args:
        src_model: serialized sentencepiece model of the source side.
        tgt_model: serialized model of the target side; None = joint (same as source).
    """

    pad_id, unk_id, bos_id, eos_id = PAD_ID, UNK_ID, BOS_ID, EOS_ID

    def __init__(self, src_model: bytes, tgt_model: bytes | None = None):
        self.joint = tgt_model is None
        self._src_bytes = src_model
        self._tgt_bytes = src_model if tgt_model is None else tgt_model
        self.src = spm.SentencePieceProcessor(model_proto=self._src_bytes)
        self.tgt = self.src if self.joint else spm.SentencePieceProcessor(model_proto=self._tgt_bytes)

    @classmethod
    def train(cls, src_texts: Iterable[str], tgt_texts: Iterable[str], cfg: TokenizerConfig) -> Tokenizer:
        """Train on parallel training texts: one joint model or one per side (``cfg.joint``).

        Each side is read once, as a stream (a generator over a large corpus never sits in
        memory as one list); the joint model reads the source texts, then the target texts.
        """
        if cfg.joint:
            return cls(train_sentencepiece(itertools.chain(src_texts, tgt_texts), cfg))
        return cls(train_sentencepiece(src_texts, cfg), train_sentencepiece(tgt_texts, cfg))

    @classmethod
    def from_state(cls, state: dict) -> Tokenizer:
        """Inverse of :meth:`state`."""
        return cls(state["src_model"], None if state["joint"] else state["tgt_model"])

    def state(self) -> dict:
        """Plain data for a checkpoint: ``{"joint": bool, "src_model": bytes, "tgt_model": bytes}``."""
        return {"joint": self.joint, "src_model": self._src_bytes, "tgt_model": self._tgt_bytes}

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, texts: Sequence[str]) -> list[list[int]]:
        """Source texts → piece ids, without EOS (the data pipeline appends it)."""
        return self.src.encode(list(texts))

    def encode_tgt(self, texts: Sequence[str]) -> list[list[int]]:
        """Target texts → piece ids, without BOS/EOS."""
        return self.tgt.encode(list(texts))

    def sample(
        self, src_texts: Sequence[str], tgt_texts: Sequence[str], alpha: float, nbest_size: int, seed: int
    ) -> tuple[list[list[int]], list[list[int]]]:
        """One segmentation per text drawn from the model's distribution over segmentations
        instead of the best one: subword regularization (Kudo 2018; BPE-dropout for a BPE model,
        Provilkov et al. 2020), sentencepiece's ``enable_sampling``.

        Args:
            alpha, nbest_size: sentencepiece's sampling options (``tokenizer.alpha``,
                ``tokenizer.nbest_size``).
            seed: in one process, the same seed draws the same segmentations (sentencepiece's
                generator is seeded before each side, which is encoded on one thread); another
                process draws others (sentencepiece 0.2.3), which is why distributed training
                shares rank 0's (:meth:`mt.training.training_data.TrainingData.resample`).

        Returns:
            src_ids, tgt_ids: piece ids per text, without specials, as :meth:`encode_src` and
            :meth:`encode_tgt`.
        """
        options = dict(enable_sampling=True, alpha=alpha, nbest_size=nbest_size, num_threads=1)
        spm.set_random_generator_seed((2 * seed) & 0xFFFFFFFF)  # global to sentencepiece
        src_ids = self.src.encode(list(src_texts), **options)
        spm.set_random_generator_seed((2 * seed + 1) & 0xFFFFFFFF)
        return src_ids, self.tgt.encode(list(tgt_texts), **options)

    def decode_tgt(self, ids: Sequence[Sequence[int]]) -> list[str]:
        """Target piece ids (no specials) → detokenized text."""
        return self.tgt.decode([list(sequence) for sequence in ids])

    def src_pieces(self, text: str) -> list[Piece]:
        """Source pieces of ``text`` with character offsets into ``text`` (for word alignment)."""
        return _pieces(self.src, text)

    def tgt_pieces(self, text: str) -> list[Piece]:
        """Target pieces of ``text`` with character offsets into ``text``."""
        return _pieces(self.tgt, text)


def _pieces(processor: spm.SentencePieceProcessor, text: str) -> list[Piece]:
    proto = processor.encode(text, out_type="proto")  # offsets are UTF-8 byte offsets
    char_of_byte = [0] * (len(text.encode("utf-8")) + 1)
    position = 0
    for i, char in enumerate(text):
        width = len(char.encode("utf-8"))
        char_of_byte[position : position + width] = [i] * width
        position += width
    char_of_byte[position] = len(text)
    return [Piece(p.id, p.piece, char_of_byte[p.begin], char_of_byte[p.end]) for p in proto.pieces]
