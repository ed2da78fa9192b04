"""The training data at scale (issue 12): length-sorted batching by numpy keeps the order of the
sort it replaced; sentencepiece's sample of the training texts."""

from __future__ import annotations

import random

import numpy as np
import sentencepiece as spm
from hypothesis import given
from hypothesis import strategies as st

from mt.batching import token_batches
from mt.config import TokenizerConfig
from mt.tokenizer import train_sentencepiece


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
