"""The training data at scale (issue 12): token ids kept flat and memory-mapped give exactly the
batches the per-pair Python lists gave; length-sorted batching by numpy keeps the order of the
sort it replaced; the caches hash the texts, not their Arrow layout; sentencepiece's sample of
the training texts."""

from __future__ import annotations

import random

import datasets
import numpy as np
import pytest
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from mt.training import distributed
from mt.data.batching import collate, token_batches
from mt.config import Config, DataConfig, TokenizerConfig
from mt.training.distributed import Context
from mt.data.tokenizer import Tokenizer, train_sentencepiece
from mt.training.step import epoch_updates
from mt.training.training_data import PackedIds, kept_pairs, load_tokenizer, prepare_data, tokenize

from conftest import BILINGUAL_TEXTS


def sorted_token_batches(src_lens, tgt_lens, batch_tokens, shuffle, seed=0):
    """token_batches as it was before numpy: Python's sort on (src, tgt, random key) tuples."""
    rng = random.Random(seed)
    keys = [rng.random() if shuffle else 0.0 for _ in src_lens]
    order = sorted(range(len(src_lens)), key=lambda i: (src_lens[i], tgt_lens[i], keys[i]))
    batches, current, longest = [], [], 0
    for i in order:
        length = max(src_lens[i], tgt_lens[i]) + 1
        if current and max(longest, length) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, length)
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


@given(
    lengths=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=300),  # many ties
    batch_tokens=st.integers(1, 40),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_numpy_token_batches_equal_the_sorted_ones(lengths, batch_tokens, shuffle, seed):
    src_lens, tgt_lens = [s for s, _ in lengths], [t for _, t in lengths]
    expected = sorted_token_batches(src_lens, tgt_lens, batch_tokens, shuffle, seed)
    assert token_batches(src_lens, tgt_lens, batch_tokens, shuffle, seed) == expected
    assert token_batches(np.array(src_lens, np.int32), np.array(tgt_lens, np.int32), batch_tokens, shuffle, seed) == expected


def test_packed_ids_read_an_arrow_list_column_without_copying():
    lists = [[5, 6], [], [7], [8, 9, 10]]
    column = pa_chunked([lists[:1], lists[1:3], lists[3:]])  # three chunks, as a multi-batch Arrow file
    packed = PackedIds.from_arrow(column)
    assert [packed[i] for i in range(len(packed))] == lists and list(packed) == lists
    assert packed.lengths.tolist() == [2, 0, 1, 3]
    assert [packed.select(np.array([3, 0]))[i] for i in range(2)] == [[8, 9, 10], [5, 6]]
    assert np.shares_memory(packed.chunks[2], np.asarray(column.chunks[2].values))  # the Arrow buffer itself
    sliced = PackedIds.from_arrow(column.chunks[2].slice(0))  # offsets of a slice are honoured
    assert sliced[0] == [8, 9, 10]
    with pytest.raises(TypeError, match="list<int32>"):
        PackedIds.from_arrow(pa_chunked([[[1]]], "int64"))


def pa_chunked(chunks, value_type="int32"):
    import pyarrow as pa

    return pa.chunked_array([pa.array(chunk, pa.list_(getattr(pa, value_type)())) for chunk in chunks])


# --------------------------------------------------------------------- the whole data path
TRAIN = [
    ("Ein Hund rennt im Park.", "A dog runs in the park."),
    ("Zwei Männer spielen Fußball.", "Two men play soccer."),
    ("", "An empty source."),  # dropped: empty
    (" ".join(["Hund"] * 40), " ".join(["dog"] * 40)),  # dropped: over max_len
    ("Ein Hund.", "A dog."),
    ("Zwei Hunde spielen im Park.", "Two dogs play in the park."),
] * 20


def write_corpus(folder) -> None:
    for split, pairs in {"train": TRAIN, "valid": TRAIN[:4], "test": TRAIN[:4]}.items():
        (folder / f"{split}.de").write_text("".join(src + "\n" for src, _ in pairs))
        (folder / f"{split}.en").write_text("".join(tgt + "\n" for _, tgt in pairs))


def files_config(folder) -> Config:
    cfg = Config()
    cfg.data = DataConfig(source="files", name=None, path=str(folder), train_split="train", valid_split="valid",
                          test_split="test", data_dir=str(folder / "data"), max_len=30)  # fmt: skip
    cfg.tokenizer = TokenizerConfig(vocab_size=60)
    cfg.train.batch_tokens = 64
    return cfg


def test_the_memory_mapped_store_gives_the_batches_the_lists_gave(tmp_path):
    write_corpus(tmp_path)
    cfg = files_config(tmp_path)
    for _ in ("cold", "cached"):
        data = prepare_data(cfg, Context(), None)
        assert isinstance(data.train_src, PackedIds)
        # the naive path: encode every text, keep the pairs with 1..max_len pieces on both sides
        src_ids, tgt_ids = data.tokenizer.encode_src([s for s, _ in TRAIN]), data.tokenizer.encode_tgt([t for _, t in TRAIN])
        kept = [i for i in range(len(TRAIN)) if 0 < len(src_ids[i]) <= 30 and 0 < len(tgt_ids[i]) <= 30]
        src_lists, tgt_lists = [src_ids[i] for i in kept], [tgt_ids[i] for i in kept]
        assert len(kept) == len(TRAIN) * 4 // 6
        assert data.src_lens == [len(s) for s in src_lists] and data.tgt_lens == [len(t) for t in tgt_lists]
        for epoch in (1, 2):
            updates = epoch_updates(data.src_lens, data.tgt_lens, cfg.train, epoch, group_size=1)
            assert [g[0] for g in updates] == sorted_token_batches(data.src_lens, data.tgt_lens, 64, True, cfg.train.seed + epoch)
            for (indices,) in updates:
                batch = data.batch(indices)
                expected = collate([src_lists[i] for i in indices], [tgt_lists[i] for i in indices], indices)
                for name in ("src_ids", "tgt_in", "tgt_out"):
                    assert getattr(batch, name).dtype == getattr(expected, name).dtype
                    assert getattr(batch, name).equal(getattr(expected, name)), name
    assert len(list((tmp_path / "data" / "cache").glob("tokenized-*.arrow"))) == 1  # the second run reused it


def test_kept_pairs_have_1_to_max_len_pieces_on_both_sides():
    rng = random.Random(0)
    src = [list(range(rng.randint(0, 6))) for _ in range(200)]
    tgt = [list(range(100, 100 + rng.randint(0, 6))) for _ in range(200)]
    tokenized = tokenize(datasets.Dataset.from_dict({"src": ["x"] * 200, "tgt": ["y"] * 200}), FixedIds(src, tgt))
    for dataset, rows in ((tokenized, range(200)), (tokenized.select(range(199, -1, -2)), range(199, -1, -2))):
        packed_src, packed_tgt, kept = kept_pairs(dataset, max_len=4)
        expected = [k for k, row in enumerate(rows) if 0 < len(src[row]) <= 4 and 0 < len(tgt[row]) <= 4]
        assert kept.tolist() == expected
        assert list(packed_src) == [src[rows[k]] for k in expected] and list(packed_tgt) == [tgt[rows[k]] for k in expected]


class FixedIds:
    """A stand-in tokenizer that gives row i the ids ``src[i]`` / ``tgt[i]``, whatever the text."""

    def __init__(self, src, tgt):
        self.src, self.tgt, self.row = src, tgt, {"src": 0, "tgt": 0}

    def _next(self, side, texts):
        ids = getattr(self, side)[self.row[side] : self.row[side] + len(texts)]
        self.row[side] += len(texts)
        return ids

    def encode_src(self, texts):
        return self._next("src", texts)

    def encode_tgt(self, texts):
        return self._next("tgt", texts)


# ------------------------------------------------------------------------ the cache keys
def test_the_tokenizer_cache_key_is_the_texts_not_their_arrow_layout(tmp_path, monkeypatch):
    real_train, trained = Tokenizer.train.__func__, []
    monkeypatch.setattr(Tokenizer, "train", classmethod(lambda cls, *args: trained.append(1) or real_train(cls, *args)))
    pairs = {"src": BILINGUAL_TEXTS * 10, "tgt": BILINGUAL_TEXTS[::-1] * 10}
    cfg = TokenizerConfig(vocab_size=50)
    load_tokenizer(cfg, datasets.Dataset.from_dict(pairs), tmp_path)
    halves = [datasets.Dataset.from_dict({k: v[:15] for k, v in pairs.items()}),
              datasets.Dataset.from_dict({k: v[15:] for k, v in pairs.items()})]  # fmt: skip
    load_tokenizer(cfg, datasets.concatenate_datasets(halves), tmp_path)  # two Arrow chunks, the same texts
    load_tokenizer(cfg, pairs, tmp_path)  # a plain mapping of lists too
    assert len(trained) == 1
    first, second, *rest = pairs["src"]
    for changed in (
        {**pairs, "src": [first + "!", second, *rest]},  # one character more
        {"src": pairs["src"][:-1], "tgt": pairs["tgt"][:-1]},  # one pair fewer
        {**pairs, "src": [first + second[:3], second[3:], *rest]},  # the same bytes, another line break
    ):
        load_tokenizer(cfg, changed, tmp_path)
    assert len(trained) == 4


# ------------------------------------------------------------------ sentencepiece's sample
CORPUS = [f"Satz {i}: {' '.join(random.Random(i).choices(['Hund', 'Katze', 'Park', 'spielt', 'rennt'], k=6))}"
          for i in range(2000)]  # fmt: skip


def pieces(model: bytes) -> list[tuple[str, float]]:
    processor = spm.SentencePieceProcessor(model_proto=model)
    return [(processor.id_to_piece(i), processor.get_score(i)) for i in range(processor.get_piece_size())]


def test_a_sample_as_large_as_the_corpus_trains_on_everything():
    everything = train_sentencepiece(CORPUS, TokenizerConfig(vocab_size=100, input_sentence_size=0), num_threads=1)
    at_least_all = train_sentencepiece(CORPUS, TokenizerConfig(vocab_size=100, input_sentence_size=2000), num_threads=1)
    assert pieces(at_least_all) == pieces(everything)


def test_a_smaller_sample_is_a_fixed_one():
    cfg = TokenizerConfig(vocab_size=100, input_sentence_size=150)
    sampled = [train_sentencepiece(iter(CORPUS), cfg, num_threads=1) for _ in range(2)]
    assert pieces(sampled[0]) == pieces(sampled[1])  # the same vocabulary on every machine and run
    everything = train_sentencepiece(CORPUS, TokenizerConfig(vocab_size=100, input_sentence_size=0), num_threads=1)
    assert pieces(sampled[0]) != pieces(everything)


# ------------------------------------------------------- subword regularization (sampling)
def test_sampling_draws_a_segmentation_per_epoch_that_spells_the_same_text(tmp_path):
    write_corpus(tmp_path)
    cfg = files_config(tmp_path)
    best = prepare_data(cfg, Context(), None)
    cfg.tokenizer.sampling, cfg.tokenizer.alpha = True, 0.1
    data = prepare_data(cfg, Context(), None)
    assert data.tokenizer.state() == best.tokenizer.state()  # sampling is no reason to retrain sentencepiece
    assert list(data.train_src) == list(best.train_src)  # the best segmentation until the first resample
    texts = [(s, t) for s, t in TRAIN if s and len(s.split()) < 40]  # the kept pairs, in order
    draws = {}
    for seed in (1, 2, 1):
        data.resample(seed)
        draws.setdefault(seed, []).append((list(data.train_src), list(data.train_tgt)))
        assert data.src_lens == [len(s) for s in data.train_src] and data.tgt_lens == [len(t) for t in data.train_tgt]
        assert data.tokenizer.src.decode(list(data.train_src)) == [s for s, _ in texts]
        assert data.tokenizer.decode_tgt(list(data.train_tgt)) == [t for _, t in texts]
        assert sum(data.tgt_lens) >= sum(best.tgt_lens)  # the best segmentation is the shortest
    assert draws[1][0] == draws[1][1]  # the same seed, the same segmentation
    assert draws[1][0] != draws[2][0] and draws[1][0][1] != list(best.train_tgt)
    batch = data.batch([0, 1])
    assert batch.src_ids[0, : data.src_lens[0]].tolist() == data.train_src[0]


def test_distributed_ranks_train_on_rank_0s_sampled_segmentation(tmp_path, monkeypatch):
    """sentencepiece's sampling differs between processes, and each rank batches by the pieces'
    lengths: rank 0 draws, and every other rank takes its draw instead of sampling."""
    write_corpus(tmp_path)
    cfg = files_config(tmp_path)
    cfg.tokenizer.sampling = True
    rank0, rank1 = prepare_data(cfg, Context(), None), prepare_data(cfg, Context(), None)
    sent = []  # what each rank hands to the broadcast; every rank gets rank 0's
    monkeypatch.setattr(distributed, "broadcast", lambda context, value: sent.append(value) or sent[0])
    rank0.resample(1, Context(rank=0, world_size=2))
    monkeypatch.setattr(rank1.tokenizer, "sample", lambda *args: pytest.fail("rank 1 sampled on its own"))
    rank1.resample(2, Context(rank=1, world_size=2))
    assert sent[1] == (None, None)
    assert list(rank1.train_src) == list(rank0.train_src) != list(prepare_data(cfg, Context(), None).train_src)
    assert list(rank1.train_tgt) == list(rank0.train_tgt) and rank1.tgt_lens == rank0.tgt_lens


def test_a_sample_longer_than_max_len_keeps_the_best_segmentation(tmp_path):
    write_corpus(tmp_path)
    cfg = files_config(tmp_path)
    cfg.tokenizer.sampling, cfg.tokenizer.alpha = True, 0.01  # nearly uniform: long samples
    data = prepare_data(cfg, Context(), None)
    best_src, best_tgt = list(data.train_src), list(data.train_tgt)
    max_len = data.sampling.max_len = max(max(data.src_lens), max(data.tgt_lens))  # the longest best one
    sampling = data.sampling
    raw_src, raw_tgt = data.tokenizer.sample(sampling.src_texts, sampling.tgt_texts, sampling.alpha, sampling.nbest_size, seed=3)
    too_long = [i for i in range(len(raw_src)) if len(raw_src[i]) > max_len or len(raw_tgt[i]) > max_len]
    assert 0 < len(too_long) < len(raw_src)
    data.resample(3)
    for i in range(len(raw_src)):
        expected = (best_src[i], best_tgt[i]) if i in too_long else (raw_src[i], raw_tgt[i])
        assert (data.train_src[i], data.train_tgt[i]) == expected, i


def test_packed_ids_from_lists_round_trip():
    lists = [[5, 6], [], [7], [8, 9, 10]]
    packed = PackedIds.from_lists(lists)
    assert list(packed) == lists and packed.lengths.tolist() == [2, 0, 1, 3]
    assert list(PackedIds.from_lists([])) == []
