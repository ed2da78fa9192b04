"""Word pooling, piece→word mapping, hard links and the Pharaoh format, on hand-made cases."""

import numpy as np
import pytest
import torch

from mt.align import (
    NO_WORD,
    align,
    argmax_links,
    format_pharaoh,
    parse_pharaoh,
    piece_words,
    pool_to_words,
    words_of,
)
from mt.config import TokenizerConfig
from mt.model import Transformer
from mt.tokenizer import Piece, Tokenizer

from conftest import tiny_config


def test_pool_sums_source_pieces_and_averages_target_pieces():
    # target pieces: [t0 t1] = word 0, [t2] = word 1, EOS; source pieces: [s0] = word 0, [s1 s2] = word 1, EOS
    matrix = np.array(
        [
            [0.1, 0.2, 0.3, 0.4],
            [0.3, 0.2, 0.1, 0.4],
            [0.6, 0.1, 0.1, 0.2],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    words = pool_to_words(matrix, [0, 0, 1, NO_WORD], [0, 1, 1, NO_WORD], n_tgt_words=2, n_src_words=2)
    # word 0 row: mean of rows 0,1 = [0.2, 0.2, 0.2, 0.4] → source words [0.2, 0.4] → renormalised [1/3, 2/3]
    # word 1 row: [0.6, 0.2] → [0.75, 0.25]
    np.testing.assert_allclose(words, [[1 / 3, 2 / 3], [0.75, 0.25]], atol=1e-6)


def test_pool_keeps_zero_rows_for_words_without_mass():
    matrix = np.array([[0.0, 0.0, 1.0]])  # all mass on EOS
    words = pool_to_words(matrix, [0], [0, 1, NO_WORD], n_tgt_words=2, n_src_words=2)
    assert words.shape == (2, 2)
    assert np.all(words == 0)
    assert argmax_links(words) == []


def test_argmax_links_are_source_target_pairs():
    words = np.array([[0.1, 0.9, 0.0], [0.7, 0.2, 0.1]])
    assert argmax_links(words) == [(0, 1), (1, 0)]


def test_pharaoh_round_trip():
    links = [(0, 0), (2, 1), (10, 3)]
    assert format_pharaoh(links) == "0-0 2-1 10-3"
    assert parse_pharaoh(format_pharaoh(links)) == links
    assert parse_pharaoh("") == []


@pytest.mark.parametrize("bad", ["0-", "a-1", "1:2", "-1-2", "1-2-3"])
def test_pharaoh_parse_rejects_malformed_links(bad):
    with pytest.raises(ValueError, match="Pharaoh"):
        parse_pharaoh(bad)


def test_piece_words_uses_character_overlap_and_borrows_for_zero_width_pieces():
    text = "Ein  Hündchen rennt."
    words, spans = words_of(text)
    assert words == ["Ein", "Hündchen", "rennt."]
    pieces = [
        Piece(5, "▁Ein", 0, 3),
        Piece(6, "▁", 3, 5),  # whitespace only: belongs to the next word
        Piece(7, "Hünd", 5, 9),
        Piece(8, "chen", 9, 13),
        Piece(9, "▁rennt", 13, 19),  # leading space included in the span
        Piece(10, ".", 19, 20),
    ]
    assert piece_words(pieces, spans) == [0, 1, 1, 1, 2, 2]
    assert piece_words([Piece(4, "▁", 0, 1)], []) == [NO_WORD]


@pytest.fixture(scope="module")
def tokenizer():
    texts = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball.", "A dog runs in the park.", "Two men play soccer."] * 20
    return Tokenizer.train(texts, texts, TokenizerConfig(vocab_size=60))


def test_real_pieces_map_to_whitespace_words_with_multibyte_and_unknown_characters(tokenizer):
    text = "Zwei  Männer 😀 spielen Fußball.\u200b"
    pieces = tokenizer.src_pieces(text)
    words, spans = words_of(text)
    owners = piece_words(pieces, spans)
    assert set(owners) <= set(range(len(words)))
    for piece, owner in zip(pieces, owners):
        begin, end = spans[owner]
        surface = text[piece.begin : piece.end]
        if surface.strip():  # a piece's visible characters lie inside its word
            visible_begin = piece.begin + len(surface) - len(surface.lstrip())
            assert begin <= visible_begin and piece.end <= end


def test_align_returns_consistent_shapes_and_probabilities(tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    sources = ["Ein Hund rennt im Park.", "Zwei Männer", "😀"]
    targets = ["A dog runs in the park.", "Two men play soccer.", "x"]
    results = align(model, tokenizer, sources, targets, batch_size=2)
    for a, src, tgt in zip(results, sources, targets):
        n_src_pieces, n_tgt_pieces = len(tokenizer.src_pieces(src)), len(tokenizer.tgt_pieces(tgt))
        assert a.attention.shape == (2, 2, n_tgt_pieces + 1, n_src_pieces + 1)
        assert a.src_tokens[-1] == a.tgt_tokens[-1] == "</s>"
        np.testing.assert_allclose(a.attention.sum(-1), 1.0, atol=1e-5)
        assert a.word_matrix.shape == (len(tgt.split()), len(src.split()))
        np.testing.assert_allclose(a.word_matrix.sum(-1), 1.0, atol=1e-5)
        assert len(a.links) == len(tgt.split())
        assert all(0 <= i < len(src.split()) and 0 <= j < len(tgt.split()) for i, j in a.links)


def test_align_batches_do_not_change_results(tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    sources = ["Ein Hund rennt im Park.", "Zwei Männer", "Ein Hund"]
    targets = ["A dog runs in the park.", "Two men play soccer.", "A dog"]
    one_by_one = align(model, tokenizer, sources, targets, batch_size=1)
    batched = align(model, tokenizer, sources, targets, batch_size=3)
    for a, b in zip(one_by_one, batched):
        np.testing.assert_allclose(a.attention, b.attention, atol=1e-5)


def test_align_rejects_bad_layer_and_heads(tokenizer):
    model = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    with pytest.raises(ValueError, match="layer"):
        align(model, tokenizer, ["a"], ["b"], layer=5)
    with pytest.raises(ValueError, match="heads"):
        align(model, tokenizer, ["a"], ["b"], heads=[2])
