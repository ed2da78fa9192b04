"""What training reads before its first update: texts → subwords → token ids and batches.

:func:`prepare_data` loads the configured corpus (:mod:`mt.corpora`), trains or reuses the
sentencepiece model, tokenizes with caching, drops over-long training pairs and builds the
validation batches and the gold alignment set. Under torchrun rank 0 runs it first and fills
the caches; the other ranks then read them (:func:`mt.distributed.main_first`).

Its steps are public for the benchmarks that rebuild training's data: :func:`load_tokenizer`
(sentencepiece trained once per inputs, cached under ``data_dir/cache``) and :func:`tokenize`
(a text dataset's token ids, cached under a hash of the texts and the models);
:func:`encode_stream` is the streamed counterpart (``data.streaming``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from mt import alignment_targets, batching, corpora
from mt import distributed
from mt.aer import GoldAlignment, load_gold
from mt.checkpoint import save_checkpoint
from mt.config import Config, DataConfig, TokenizerConfig, to_dict
from mt.errors import ConfigError
from mt.tokenizer import Tokenizer
from mt.words import Segmentation, segment

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Everything the training loop reads.

    Attributes:
        tokenizer: the run's sentencepiece model(s).
        splits: ``{"train", "valid", "test"}`` text datasets (columns ``src``, ``tgt``); train is
            an IterableDataset with ``data.streaming``.
        train_src, train_tgt: piece ids per training pair (no specials), pairs longer than
            ``data.max_len`` or empty dropped.
        src_lens, tgt_lens: their lengths in pieces.
        valid_batches: the validation split as padded batches (fixed order).
        gold: the ``data.alignment_gold`` set oriented src→tgt, or None.
        gold_segmentations: its pairs segmented into pieces and words, or None.
        train_links: with ``data.alignments``, one (n_links, 2) int array per training pair
            (columns src_piece, tgt_piece: positions in ``train_src``/``train_tgt``, no BOS/EOS)
            for guided alignment (:mod:`mt.alignment_targets`); None when ``data.alignments=none``.
    """

    tokenizer: Tokenizer
    splits: dict
    train_src: Sequence[Sequence[int]]
    train_tgt: Sequence[Sequence[int]]
    src_lens: list[int]
    tgt_lens: list[int]
    valid_batches: list[batching.Batch]
    gold: GoldAlignment | None = None
    gold_segmentations: list[Segmentation] | None = None
    train_links: list[np.ndarray] | None = None

    def batch(self, indices: list[int]) -> batching.Batch:
        """The training pairs at ``indices`` as one padded batch (:func:`mt.batching.collate`)."""
        links = [self.train_links[i] for i in indices] if self.train_links is not None else None
        return batching.collate([self.train_src[i] for i in indices], [self.train_tgt[i] for i in indices], indices, links)

    def write_tokenizer(self, out_dir: Path, src_lang: str, tgt_lang: str) -> None:
        """``sentencepiece.model`` (joint) or ``sentencepiece.{src_lang,tgt_lang}.model`` in the run dir."""
        state = self.tokenizer.state()
        if self.tokenizer.joint:
            (out_dir / "sentencepiece.model").write_bytes(state["src_model"])
        else:
            (out_dir / f"sentencepiece.{src_lang}.model").write_bytes(state["src_model"])
            (out_dir / f"sentencepiece.{tgt_lang}.model").write_bytes(state["tgt_model"])


def load_tokenizer(cfg: TokenizerConfig, train_set, cache_dir: Path) -> Tokenizer:
    """Train sentencepiece on the training split, or reuse the model trained on the same inputs."""
    digest = hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode())
    for line in (*train_set["src"], *train_set["tgt"]):
        digest.update(line.encode() + b"\n")
    path = cache_dir / f"sentencepiece-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return Tokenizer.from_state(torch.load(path, weights_only=True))
    log.info("training sentencepiece (%s, %d pieces) on %d pairs", cfg.model_type, cfg.vocab_size, len(train_set))
    tokenizer = Tokenizer.train(train_set["src"], train_set["tgt"], cfg)
    save_checkpoint(tokenizer.state(), path)
    return tokenizer


def tokenize(dataset: datasets.Dataset, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """Add columns ``src_ids`` and ``tgt_ids`` (piece ids, no specials).

    With ``cache_dir`` the result is saved under a hash of the texts and the tokenizer models
    and loaded from there by the next run with the same inputs.
    """

    def encode(batch: dict) -> dict:
        return {"src_ids": tokenizer.encode_src(batch["src"]), "tgt_ids": tokenizer.encode_tgt(batch["tgt"])}

    if cache_dir is None:
        return dataset.map(encode, batched=True, batch_size=2000)
    digest = hashlib.sha256()
    state = tokenizer.state()
    for part in (state["src_model"], state["tgt_model"], *dataset["src"], *dataset["tgt"]):
        digest.update(part if isinstance(part, bytes) else part.encode() + b"\n")
    path = Path(cache_dir) / f"tokenized-{digest.hexdigest()[:16]}"
    if path.exists():
        return datasets.load_from_disk(str(path))
    tokenized = dataset.map(encode, batched=True, batch_size=2000)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tokenized.save_to_disk(str(tmp))
    try:
        os.replace(tmp, path)
    except OSError:  # another run saved the same cache meanwhile (a folder is not replaced): use theirs
        if not path.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return datasets.load_from_disk(str(path))


def encode_stream(
    pairs: Iterable[dict], tokenizer: Tokenizer, max_len: int, chunk_size: int = 10_000
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tokenize a stream of ``{"src", "tgt"}`` pairs chunk by chunk, keeping only the ids.

    Pairs with an empty side or more than ``max_len`` pieces on either side are dropped (as the
    in-memory training path does) and counted in one log line.

    Returns:
        src_ids, tgt_ids: one int32 array of piece ids (no specials) per kept pair, in stream
        order; ``src_ids[i]`` and ``tgt_ids[i]`` are the two sides of one pair.
    """
    src_out: list[np.ndarray] = []
    tgt_out: list[np.ndarray] = []
    total = 0
    iterator = iter(pairs)
    while chunk := list(itertools.islice(iterator, chunk_size)):
        total += len(chunk)
        src_ids = tokenizer.encode_src([pair["src"] for pair in chunk])
        tgt_ids = tokenizer.encode_tgt([pair["tgt"] for pair in chunk])
        for s, t in zip(src_ids, tgt_ids):
            if 0 < len(s) <= max_len and 0 < len(t) <= max_len:
                src_out.append(np.asarray(s, dtype=np.int32))
                tgt_out.append(np.asarray(t, dtype=np.int32))
    dropped = total - len(src_out)
    log.info("encoded %d training pairs; dropped %d longer than data.max_len=%d or empty", total, dropped, max_len)
    return src_out, tgt_out


def load_run_gold(data_cfg: DataConfig) -> GoldAlignment:
    """``data.alignment_gold``, oriented src→tgt as the run translates.

    Raises:
        DataError: files missing or malformed.  ConfigError: a gold set of another language pair.
    """
    gold = load_gold(data_cfg.alignment_gold)
    try:
        return gold.oriented(data_cfg.src_lang, data_cfg.tgt_lang)
    except ValueError as error:
        raise ConfigError(f"config key 'data.alignment_gold' = {data_cfg.alignment_gold!r}: {error}") from None


def prepare_data(cfg: Config, context: distributed.Context, resume_state: dict | None) -> TrainingData:
    """Load the corpus, the subwords and the token ids of a run (rank 0 first, see module doc).

    Args:
        cfg: the root config (``data``, ``tokenizer``, ``train.batch_tokens``, ``model.max_positions``).
        resume_state: a checkpoint being resumed: its tokenizer is used, whatever the cache holds.

    Raises:
        DataError: corpus files missing or inconsistent.  ConfigError: a gold set of another pair.
    """
    data_cfg = cfg.data
    gold, train_links = None, None
    with distributed.main_first(context):
        splits = corpora.load_splits(data_cfg)  # train: an IterableDataset with data.streaming
        n_corpus_pairs = None if data_cfg.streaming else len(splits["train"])
        if data_cfg.alignment_gold:
            gold = load_run_gold(data_cfg)
            if data_cfg.alignment_gold_train_copies:  # text only: the links are never trained on
                copies = data_cfg.alignment_gold_train_copies
                splits["train"] = datasets.concatenate_datasets(
                    [splits["train"], datasets.Dataset.from_dict({"src": gold.src * copies, "tgt": gold.tgt * copies})]
                )
                log.info("added %d × %d gold-set pairs (text only) to the training data", copies, len(gold))
        cache_dir = Path(data_cfg.data_dir) / "cache"
        cache_dir.mkdir(parents=True, exist_ok=True)
        if resume_state is not None:  # the subwords the model was trained with, whatever the cache holds
            tokenizer = Tokenizer.from_state(resume_state["tokenizer"])
        elif data_cfg.streaming:  # sentencepiece sees the first data.tokenizer_sample pairs
            sample = corpora.text_sample(splits["train"], data_cfg.tokenizer_sample)
            tokenizer = load_tokenizer(cfg.tokenizer, sample, cache_dir)
        else:
            tokenizer = load_tokenizer(cfg.tokenizer, splits["train"], cache_dir)
        if data_cfg.streaming:  # token ids only (int32 arrays), already filtered by data.max_len
            train_src, train_tgt = encode_stream(splits["train"], tokenizer, data_cfg.max_len)
        else:
            train_src, train_tgt, kept = _kept_pairs(tokenize(splits["train"], tokenizer, cache_dir), data_cfg.max_len)
            if data_cfg.alignments != "none":  # guided-alignment targets, in step with the kept pairs
                texts = list(splits["train"]["src"]), list(splits["train"]["tgt"])
                train_links = alignment_targets.training_links(data_cfg, *texts, tokenizer, kept, cache_dir, n_corpus_pairs)
    valid_set = tokenize(splits["valid"], tokenizer)
    valid_src = [ids[: data_cfg.max_len] for ids in valid_set["src_ids"]]
    valid_tgt = [ids[: data_cfg.max_len] for ids in valid_set["tgt_ids"]]
    valid_batches = [
        batching.collate([valid_src[i] for i in b], [valid_tgt[i] for i in b], b)
        for b in batching.token_batches(
            [len(s) for s in valid_src], [len(t) for t in valid_tgt], cfg.train.batch_tokens, shuffle=False
        )
    ]
    return TrainingData(
        tokenizer=tokenizer,
        splits=splits,
        train_src=train_src,
        train_tgt=train_tgt,
        src_lens=[len(s) for s in train_src],
        tgt_lens=[len(t) for t in train_tgt],
        valid_batches=valid_batches,
        gold=gold,
        gold_segmentations=segment(tokenizer, gold.src, gold.tgt, cfg.model.max_positions - 1) if gold else None,
        train_links=train_links,
    )


def _kept_pairs(train_set: datasets.Dataset, max_len: int) -> tuple[list[list[int]], list[list[int]], list[int]]:
    """The tokenized pairs with 1 … ``max_len`` pieces on both sides, as plain lists (the
    training loop indexes them every step; a datasets Column would re-read Arrow), and their
    indexes in ``train_set``."""
    train_src, train_tgt = list(train_set["src_ids"]), list(train_set["tgt_ids"])
    keep = [i for i, (s, t) in enumerate(zip(train_src, train_tgt)) if 0 < len(s) <= max_len and 0 < len(t) <= max_len]
    if len(keep) < len(train_src):
        log.info("dropped %d training pairs longer than data.max_len=%d or empty", len(train_src) - len(keep), max_len)
        train_src, train_tgt = [train_src[i] for i in keep], [train_tgt[i] for i in keep]
    return train_src, train_tgt, keep
