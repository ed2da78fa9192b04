"""The training data at scale (issue 12): length-sorted batching by numpy keeps the order of the
sort it replaced."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from mt.batching import token_batches


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
