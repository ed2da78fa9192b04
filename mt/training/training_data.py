"""What training reads before its first update: texts → subwords → token ids and batches.

:func:`prepare_data` loads the configured corpus (:mod:`mt.data.corpora`), trains or reuses the
sentencepiece model, tokenizes with caching, drops over-long training pairs and builds the
validation batches and the gold alignment set. Under torchrun rank 0 runs it first and fills
the caches; the other ranks then read them (:func:`mt.training.distributed.main_first`).

The training pairs' token ids stay in the memory-mapped Arrow file of the tokenized cache and
are read through :class:`PackedIds` (flat int32 arrays + offsets), a batch at a time: about
120 bytes per Multi30k pair instead of about 1.2 KB of Python lists.

Its steps are public for the benchmarks that rebuild training's data: :func:`load_tokenizer`
(sentencepiece trained once per inputs, cached under ``data_dir/cache``), :func:`tokenize`
(a text dataset's token ids, cached under a hash of the texts and the models) and
:func:`kept_pairs`; :func:`encode_stream` is the streamed counterpart (``data.streaming``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import torch

from mt.alignment import targets as alignment_targets

from mt.data import batching

from mt.data import corpora
from mt.training import distributed
from mt.alignment.aer import GoldAlignment, load_gold
from mt.model.checkpoint import save_checkpoint
from mt.config import Config, DataConfig, TokenizerConfig, subword_sampling, to_dict
from mt.errors import ConfigError
from mt.training.memory import process_memory_mb
from mt.data.tokenizer import Tokenizer
from mt.data.words import Segmentation, segment

log = logging.getLogger(__name__)

_IDS_FEATURES = datasets.Features(
    {"src_ids": datasets.Sequence(datasets.Value("int32")), "tgt_ids": datasets.Sequence(datasets.Value("int32"))}
)
_TOKENIZED_FORMAT = 2  # in the tokenized cache's key: 2 = int32 ids only, one Arrow file
IMITATION_PAIRS = 300  # training pairs the imitation AER is measured on
SAMPLING_KEYS = ("sampling", "alpha", "nbest_size")  # tokenizer keys of training-time sampling only
_BATCH_ROWS = 10_000  # rows per tokenizer call and per Arrow record batch of the tokenized cache


class PackedIds(Sequence):
    """Piece-id sequences kept in flat int32 arrays instead of one Python list each.

    Sequence ``i`` is ``chunks[chunk_of[i]][starts[i] : starts[i] + lengths[i]]``. The chunks are
    the value arrays of an Arrow ``list<int32>`` column, zero-copy: for the memory-mapped
    tokenized cache (:func:`tokenize`) the ids stay in the file and the page cache, and a batch
    reads only its own pairs. Besides its ids (4 bytes each) a sequence costs 16 bytes of index,
    where a list of Python ints costs 56 bytes and 36 more per id (pointer + int object).

    Indexing gives a ``list[int]``, as the lists it replaces did; ``lengths`` is an (n,) int
    array.
    """

    def __init__(self, chunks: list[np.ndarray], chunk_of: np.ndarray, starts: np.ndarray, lengths: np.ndarray):
        self.chunks = chunks
        self.chunk_of = chunk_of  # (n,) int32: which chunk holds sequence i
        self.starts = starts  # (n,) int64: its first id within that chunk
        self.lengths = lengths  # (n,) int32: its length in pieces

    @classmethod
    def from_arrow(cls, column: pa.ChunkedArray | pa.Array) -> PackedIds:
        """The sequences of an Arrow list column (``list<int32>``), without copying the ids.

        Raises:
            TypeError: the column is not a list of int32.
        """
        arrays = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        if not pa.types.is_list(column.type) or column.type.value_type != pa.int32():
            raise TypeError(f"expected an Arrow list<int32> column, got {column.type}")
        chunks, chunk_of, starts, lengths = [], [], [], []
        for number, array in enumerate(arrays):
            offsets = array.offsets.to_numpy()  # (len + 1,), into array.values, slice offset included
            chunks.append(array.values.to_numpy(zero_copy_only=True))
            chunk_of.append(np.full(len(array), number, dtype=np.int32))
            starts.append(offsets[:-1].astype(np.int64))
            lengths.append(np.diff(offsets).astype(np.int32))
        empty = [np.zeros(0, dtype) for dtype in (np.int32, np.int64, np.int32)]
        return cls(chunks, *(np.concatenate(parts) if parts else zero for parts, zero in zip((chunk_of, starts, lengths), empty)))

    @classmethod
    def from_lists(cls, sequences: Sequence[Sequence[int]]) -> PackedIds:
        """The sequences copied into one flat int32 array (e.g. a sampled segmentation)."""
        lengths = np.fromiter(map(len, sequences), np.int32, len(sequences))
        flat = np.fromiter(itertools.chain.from_iterable(sequences), np.int32, int(lengths.sum()))
        starts = np.zeros(len(sequences), np.int64)
        np.cumsum(lengths[:-1], out=starts[1:])
        return cls([flat], np.zeros(len(sequences), np.int32), starts, lengths)

    def select(self, rows: np.ndarray) -> PackedIds:
        """The sequences at ``rows`` ((k,) int array), in that order, sharing the same chunks."""
        return PackedIds(self.chunks, self.chunk_of[rows], self.starts[rows], self.lengths[rows])

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> list[int]:
        start = self.starts[i]
        return self.chunks[self.chunk_of[i]][start : start + self.lengths[i]].tolist()


@dataclass
class SubwordSampling:
    """What :meth:`TrainingData.resample` needs for subword regularization (``tokenizer.sampling``).

    Attributes:
        src_texts, tgt_texts: the kept training pairs' texts, in the order of their ids.
        best_src, best_tgt: their best segmentations, kept for a pair whose sample would be
            longer than ``max_len`` pieces.
        alpha, nbest_size, max_len: ``tokenizer.alpha``, ``tokenizer.nbest_size``, ``data.max_len``.
    """

    src_texts: list[str]
    tgt_texts: list[str]
    best_src: PackedIds
    best_tgt: PackedIds
    alpha: float
    nbest_size: int
    max_len: int


@dataclass
class TrainingData:
    """Everything the training loop reads.

    Attributes:
        tokenizer: the run's sentencepiece model(s).
        splits: ``{"train", "valid", "test"}`` text datasets (columns ``src``, ``tgt``); train is
            an IterableDataset with ``data.streaming``.
        train_src, train_tgt: piece ids per training pair (no specials), pairs longer than
            ``data.max_len`` or empty dropped: :class:`PackedIds` read from the memory-mapped
            tokenized cache (a list of int32 arrays with ``data.streaming``); ``[i]`` is pair i's ids.
        src_lens, tgt_lens: their lengths in pieces (plain lists of ints).
        valid_batches: the validation split as padded batches (fixed order).
        gold: the ``data.alignment_gold`` set oriented src→tgt, or None.
        gold_segmentations: its pairs segmented into pieces and words, or None.
        train_links: with ``data.alignments``, one (n_links, 2) int array per training pair
            (columns src_piece, tgt_piece: positions in ``train_src``/``train_tgt``, no BOS/EOS)
            for guided alignment (:mod:`mt.alignment.targets`); None when ``data.alignments=none``.
        imitation: with ``train_links``, up to :data:`IMITATION_PAIRS` training pairs, evenly
            spread, with their training links as a gold set (imitation AER,
            :func:`mt.alignment.align.imitation_aer`), or None.
        imitation_segmentations: their pairs segmented into pieces and words, or None.
        teacher_priors: with ``data.alignments=eflomal``, eflomal's priors learnt from the
            training links, gzip-compressed (:func:`mt.alignment.targets.training_priors`): the
            aligner's checkpoints carry them (:mod:`mt.alignment.adapt`); None otherwise.
        sampling: where training samples subwords (:func:`mt.config.subword_sampling`), the
            texts :meth:`resample` segments anew each epoch; None otherwise (every epoch reads
            the best segmentation).
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
    imitation: GoldAlignment | None = None
    imitation_segmentations: list[Segmentation] | None = None
    teacher_priors: bytes | None = None
    sampling: SubwordSampling | None = None

    def resample(self, seed: int, context: distributed.Context | None = None) -> float:
        """Draw a new segmentation of every training pair (:meth:`mt.data.tokenizer.Tokenizer.sample`)
        into ``train_src``, ``train_tgt``, ``src_lens`` and ``tgt_lens``; in one process the same
        seed gives the same one. A pair whose sample is longer than ``data.max_len`` on a side
        keeps its best segmentation on both.

        Args:
            seed: the draw's seed (``train.seed`` + epoch).
            context: under ``torch.distributed``, rank 0 draws and every rank receives its
                segmentation: sentencepiece's sampling is not reproducible across processes
                (0.2.3: the same seed in three fresh processes drew three segmentations), and
                ranks with different lengths would build different batches.

        Returns: the sampled target pieces over the best segmentation's (e.g. 1.1).
        """
        sampling = self.sampling
        src = tgt = None
        if context is None or context.is_main:
            src, tgt = self.tokenizer.sample(sampling.src_texts, sampling.tgt_texts, sampling.alpha, sampling.nbest_size, seed)
        if context is not None:
            src, tgt = distributed.broadcast(context, (src, tgt))
        for i in np.flatnonzero([len(s) > sampling.max_len or len(t) > sampling.max_len for s, t in zip(src, tgt)]):
            src[i], tgt[i] = sampling.best_src[i], sampling.best_tgt[i]
        self.train_src, self.train_tgt = PackedIds.from_lists(src), PackedIds.from_lists(tgt)
        self.src_lens, self.tgt_lens = self.train_src.lengths.tolist(), self.train_tgt.lengths.tolist()
        return sum(self.tgt_lens) / max(1, int(sampling.best_tgt.lengths.sum()))

    def batch(self, indices: list[int]) -> batching.Batch:
        """The training pairs at ``indices`` as one padded batch (:func:`mt.data.batching.collate`)."""
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


def load_tokenizer(cfg: TokenizerConfig, train_set: datasets.Dataset | Mapping, cache_dir: Path) -> Tokenizer:
    """Train sentencepiece on the training split, or reuse the model trained on the same inputs.

    Args:
        cfg: the ``tokenizer`` config (sentencepiece samples ``cfg.input_sentence_size`` of
            the texts).
        train_set: the training split, columns (or keys) ``src`` and ``tgt``; its texts are
            hashed for the cache key and streamed to sentencepiece, batch by batch.
        cache_dir: where ``sentencepiece-HASH.pt`` is kept, the hash covering ``cfg`` and the texts.
    """
    if isinstance(train_set, Mapping):
        train_set = datasets.Dataset.from_dict({"src": list(train_set["src"]), "tgt": list(train_set["tgt"])})
    trained_on = {key: value for key, value in to_dict(cfg).items() if key not in SAMPLING_KEYS}  # sampling: not the model
    digest = hashlib.sha256(json.dumps(trained_on, sort_keys=True).encode())
    _hash_texts(digest, train_set)
    path = cache_dir / f"sentencepiece-{digest.hexdigest()[:16]}.pt"
    if path.exists():
        return Tokenizer.from_state(torch.load(path, weights_only=True))
    n_sentences = len(train_set) * (2 if cfg.joint else 1)
    sample = f", a sample of {cfg.input_sentence_size:,} sentences" if 0 < cfg.input_sentence_size < n_sentences else ""
    log.info("training sentencepiece (%s, %d pieces) on %d pairs%s", cfg.model_type, cfg.vocab_size, len(train_set), sample)
    tokenizer = Tokenizer.train(_iter_texts(train_set, "src"), _iter_texts(train_set, "tgt"), cfg)
    save_checkpoint(tokenizer.state(), path)
    return tokenizer


def _iter_texts(dataset: datasets.Dataset, column: str) -> Iterator[str]:
    """The texts of one column, read from Arrow a batch at a time."""
    for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=_BATCH_ROWS):
        yield from batch.column(0).to_pylist()


def _hash_texts(digest, dataset: datasets.Dataset, columns: Sequence[str] = ("src", "tgt")) -> None:
    """Feed the texts of ``columns`` (one column after the other, in row order) to ``digest``:
    per batch of rows the string lengths (int64) and the UTF-8 bytes, straight from the Arrow
    buffers, so a million sentences are never turned into Python strings."""
    for column in columns:
        for batch in dataset.select_columns([column]).with_format("arrow").iter(batch_size=100_000):
            strings = batch.column(0).combine_chunks()  # (rows,) string or large_string
            _, offsets_buffer, data = strings.buffers()
            offset_type = np.int64 if pa.types.is_large_string(strings.type) else np.int32
            offsets = np.frombuffer(offsets_buffer, offset_type)[strings.offset : strings.offset + len(strings) + 1]
            digest.update(np.diff(offsets).astype("<i8").tobytes())
            if data is not None:  # None when every string is empty
                digest.update(memoryview(data)[int(offsets[0]) : int(offsets[-1])])


def tokenize(dataset: datasets.Dataset, tokenizer: Tokenizer, cache_dir: str | Path | None = None) -> datasets.Dataset:
    """The piece ids of a text dataset: columns ``src_ids`` and ``tgt_ids`` (int32, no specials),
    row i = pair i (the text columns are not copied).

    With ``cache_dir`` the ids are written once to ``cache_dir/tokenized-HASH.arrow`` (the hash
    covers the texts and the tokenizer models) and the dataset returned is memory-mapped from
    that file, by this run and by the next run with the same inputs.
    """

    def encode(batch: dict) -> dict:
        return {"src_ids": tokenizer.encode_src(batch["src"]), "tgt_ids": tokenizer.encode_tgt(batch["tgt"])}

    options = dict(batched=True, batch_size=_BATCH_ROWS, remove_columns=dataset.column_names, features=_IDS_FEATURES)
    if cache_dir is None:
        return dataset.map(encode, **options)
    state = tokenizer.state()
    digest = hashlib.sha256(f"format {_TOKENIZED_FORMAT}\n".encode() + state["src_model"] + state["tgt_model"])
    _hash_texts(digest, dataset)
    path = Path(cache_dir) / f"tokenized-{digest.hexdigest()[:16]}.arrow"
    if not path.exists():
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        dataset.map(encode, **options, writer_batch_size=_BATCH_ROWS, cache_file_name=str(tmp),
                    load_from_cache_file=False, new_fingerprint=digest.hexdigest())  # fmt: skip
        os.replace(tmp, path)  # atomic; a run that saved the same file meanwhile is simply replaced
    return datasets.Dataset.from_file(str(path))


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
    gold, train_links, imitation, teacher_priors = None, None, None, None
    started = time.perf_counter()
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
            train_src, train_tgt, kept = kept_pairs(tokenize(splits["train"], tokenizer, cache_dir), data_cfg.max_len)
            if data_cfg.alignments != "none":  # guided-alignment targets, in step with the kept pairs
                texts = list(splits["train"]["src"]), list(splits["train"]["tgt"])
                train_links = alignment_targets.training_links(data_cfg, *texts, tokenizer, kept, cache_dir, n_corpus_pairs)
                imitation = imitation_sample(texts, kept, train_links, tokenizer, data_cfg)
                teacher_priors = alignment_targets.training_priors(data_cfg, *texts, tokenizer, cache_dir)
    valid_set = tokenize(splits["valid"], tokenizer)
    valid_src = [ids[: data_cfg.max_len] for ids in valid_set["src_ids"]]
    valid_tgt = [ids[: data_cfg.max_len] for ids in valid_set["tgt_ids"]]
    valid_batches = [
        batching.collate([valid_src[i] for i in b], [valid_tgt[i] for i in b], b)
        for b in batching.token_batches(
            [len(s) for s in valid_src], [len(t) for t in valid_tgt], cfg.train.batch_tokens, shuffle=False
        )
    ]
    if isinstance(train_src, PackedIds):
        src_lens, tgt_lens = train_src.lengths.tolist(), train_tgt.lengths.tolist()
    else:
        src_lens, tgt_lens = [len(s) for s in train_src], [len(t) for t in train_tgt]
    sampling = None
    if subword_sampling(cfg):  # the texts of the kept pairs, segmented anew each epoch (resample)
        rows = splits["train"].select(kept)
        sampling = SubwordSampling(rows["src"], rows["tgt"], train_src, train_tgt, cfg.tokenizer.alpha,
                                   cfg.tokenizer.nbest_size, data_cfg.max_len)  # fmt: skip
    log.info("training data ready in %.1f s: %d pairs (peak RSS %.0f MB)",
             time.perf_counter() - started, len(train_src), process_memory_mb()["peak_rss_mb"])  # fmt: skip
    return TrainingData(
        tokenizer=tokenizer,
        splits=splits,
        train_src=train_src,
        train_tgt=train_tgt,
        src_lens=src_lens,
        tgt_lens=tgt_lens,
        valid_batches=valid_batches,
        gold=gold,
        gold_segmentations=segment(tokenizer, gold.src, gold.tgt, cfg.model.max_positions - 1) if gold else None,
        train_links=train_links,
        imitation=imitation,
        imitation_segmentations=(
            segment(tokenizer, imitation.src, imitation.tgt, cfg.model.max_positions - 1) if imitation else None
        ),
        teacher_priors=teacher_priors,
        sampling=sampling,
    )


def imitation_sample(
    texts: tuple[Sequence[str], Sequence[str]], kept: np.ndarray, train_links: list[np.ndarray], tokenizer: Tokenizer,
    data_cfg: DataConfig, n_pairs: int | None = None,
) -> GoldAlignment:
    """Up to ``n_pairs`` (default :data:`IMITATION_PAIRS`) kept training pairs with links, evenly
    spread over the training data, and their links as a gold set
    (:func:`mt.alignment.targets.teacher_links`)."""
    with_links = np.flatnonzero([len(links) > 0 for links in train_links])
    n_pairs = IMITATION_PAIRS if n_pairs is None else n_pairs
    chosen = with_links[np.linspace(0, len(with_links) - 1, min(n_pairs, len(with_links))).astype(int)] if len(with_links) else []
    return alignment_targets.teacher_links(
        [texts[0][kept[i]] for i in chosen], [texts[1][kept[i]] for i in chosen], [train_links[i] for i in chosen],
        tokenizer, data_cfg.src_lang, data_cfg.tgt_lang,
    )


def kept_pairs(train_set: datasets.Dataset, max_len: int) -> tuple[PackedIds, PackedIds, np.ndarray]:
    """The tokenized pairs with 1 … ``max_len`` pieces on both sides.

    Args:
        train_set: columns ``src_ids``, ``tgt_ids`` (``list<int32>``, as :func:`tokenize` makes).

    Returns:
        train_src, train_tgt: their ids, read from ``train_set``'s Arrow data without a copy.
        kept: (n_kept,) int64, their row numbers in ``train_set``, ascending.
    """
    table = train_set.with_format("arrow")[:]  # the dataset's rows: zero-copy, unless it is a selection
    src, tgt = PackedIds.from_arrow(table.column("src_ids")), PackedIds.from_arrow(table.column("tgt_ids"))
    kept = np.flatnonzero((src.lengths > 0) & (src.lengths <= max_len) & (tgt.lengths > 0) & (tgt.lengths <= max_len))
    if len(kept) < len(src):
        log.info("dropped %d training pairs longer than data.max_len=%d or empty", len(src) - len(kept), max_len)
        src, tgt = src.select(kept), tgt.select(kept)
    return src, tgt, kept
