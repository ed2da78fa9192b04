"""Word pooling, piece→word mapping, hard links and the Pharaoh format, on hand-made cases."""

import numpy as np
import pytest
import torch

from mt.alignment.aer import format_pharaoh, parse_pharaoh
from mt.alignment.aer import GoldAlignment
from mt.alignment.align import (
    METHODS,
    PairAlignment,
    align,
    argmax_links,
    links_of,
    method_rows,
    select_layer,
    symmetrize_alignments,
)
from mt.alignment.teacher_forced import teacher_forced_attention
from mt.data.words import NO_WORD, piece_words, pool, pooling_matrices, words_of
from mt.config import AlignerConfig, TokenizerConfig
from mt.model.transformer import Transformer
from mt.data.tokenizer import Piece, Tokenizer

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
    words = pool(matrix, *pooling_matrices([0, 0, 1, NO_WORD], [0, 1, 1, NO_WORD], n_tgt_words=2, n_src_words=2))
    # word 0 row: mean of rows 0,1 = [0.2, 0.2, 0.2, 0.4] → source words [0.2, 0.4] → renormalised [1/3, 2/3]
    # word 1 row: [0.6, 0.2] → [0.75, 0.25]
    np.testing.assert_allclose(words, [[1 / 3, 2 / 3], [0.75, 0.25]], atol=1e-6)


def test_pool_keeps_zero_rows_for_words_without_mass():
    matrix = np.array([[0.0, 0.0, 1.0]])  # all mass on EOS
    words = pool(matrix, *pooling_matrices([0], [0, 1, NO_WORD], n_tgt_words=2, n_src_words=2))
    assert words.shape == (2, 2)
    assert np.all(words == 0)
    assert argmax_links(words) == []


def test_argmax_links_are_source_target_pairs():
    # 3 target words (rows) × 2 source words (columns), not symmetric: the (tgt, src) reading
    # would give [(0, 1), (1, 1), (2, 0)], and (0, 2) names a source word that does not exist
    words = np.array([[0.2, 0.8], [0.3, 0.7], [0.9, 0.1]])
    assert argmax_links(words) == [(0, 2), (1, 0), (1, 1)]
    assert links_of(words) == argmax_links(words)
    assert links_of(words, threshold=0.3) == [(0, 1), (0, 2), (1, 0), (1, 1)]


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


# ------------------------------------------------------------------------ extraction methods
def test_method_rows_pick_the_predicting_or_the_input_row():
    # teacher-forced rows: 0 = input BOS, 1 = input y1, 2 = input y2 (predicts EOS)
    attention = np.arange(3)[:, None] * np.ones((3, 4))  # row t filled with t
    assert method_rows(attention, "attention")[:, 0].tolist() == [0, 1]  # y1 ← row 0, y2 ← row 1
    assert method_rows(attention, "shift")[:, 0].tolist() == [1, 2]  # y1 ← row 1, y2 ← row 2
    with pytest.raises(ValueError, match="attention, shift"):
        method_rows(attention, "prophet")


def test_methods_match_a_step_by_step_reference(tokenizer):
    """Each target piece's row equals the last row of a decoder run on exactly the prefix the
    method names: y_<i (attention) or y_≤i (shift, Chen et al. 2020)."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    src, tgt = "Zwei Männer spielen Fußball.", "Two men play soccer."
    src_ids = torch.tensor([[*tokenizer.encode_src([src])[0], tokenizer.eos_id]])
    tgt_ids = tokenizer.encode_tgt([tgt])[0]
    (full,) = teacher_forced_attention(model, [src_ids[0, :-1].tolist()], [tgt_ids])
    with torch.inference_mode():
        memory, src_mask = model.encode(src_ids)
        for i in range(len(tgt_ids)):
            for method, prefix in (("attention", tgt_ids[:i]), ("shift", tgt_ids[: i + 1])):
                tgt_in = torch.tensor([[tokenizer.bos_id, *prefix]])
                _, weights = model.decode(tgt_in, memory, src_mask, need_weights=True)
                for layer, layer_weights in enumerate(weights):
                    expected = layer_weights[0, :, -1].numpy()  # (n_heads, src_len)
                    np.testing.assert_allclose(method_rows(full[layer], method)[:, i], expected, atol=1e-5)


def test_threshold_links_are_many_to_many():
    words = np.array([[0.5, 0.4, 0.1], [0.2, 0.2, 0.6], [0.25, 0.25, 0.5]])
    assert links_of(words) == [(0, 0), (2, 1), (2, 2)]
    assert links_of(words, threshold=0.3) == [(0, 0), (1, 0), (2, 1), (2, 2)]
    assert links_of(words, threshold=0.7) == []


def test_words_without_pieces_split_words_and_glued_punctuation(tokenizer):
    # "\u200b" is deleted by the normalizer: the word exists but owns no piece; "Fußball," is
    # one whitespace word made of several pieces with its comma glued on
    text = "Zwei \u200b Fußball, Donaudampfschiff"
    words, spans = words_of(text)
    pieces = tokenizer.src_pieces(text)
    owners = piece_words(pieces, spans)
    assert 1 not in owners
    assert {owners[k] for k, p in enumerate(pieces) if p.piece.strip("▁") in (",",)} == {2}
    assert owners.count(3) >= 3  # a rare word in many pieces, all on it
    assert owners == sorted(owners)  # pieces follow the words in order
    torch.manual_seed(0)
    with_aligner = tiny_config(aligner=AlignerConfig(enabled=True, n_heads=2, ffn_dim=64))  # every method can run
    model = Transformer(with_aligner, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    for method in METHODS:
        (a,) = align(model, tokenizer, [text], ["\u200b Two men ,"], method=method)
        assert a.word_matrix.shape == (4, 4)
        np.testing.assert_array_equal(a.word_matrix[:, 1], 0.0)  # the empty source word gets no mass
        np.testing.assert_array_equal(a.word_matrix[0], 0.0)  # the empty target word no row
        assert all(i != 1 and j != 0 for i, j in a.links)


def test_symmetrize_alignments_flips_reverse_links():
    def pair(src_words, tgt_words, links):
        return PairAlignment(np.zeros(0), [], [], src_words, tgt_words, np.zeros(0), links)

    forward = [pair(["a", "b"], ["x", "y", "z"], [(0, 0), (1, 1), (1, 2)])]
    reverse = [pair(["x", "y", "z"], ["a", "b"], [(0, 0), (1, 1), (2, 0)])]  # (tgt, src) order
    (union,) = symmetrize_alignments(forward, reverse, "union")
    assert union.links == [(0, 0), (0, 2), (1, 1), (1, 2)]
    assert union.reverse_links == [(0, 0), (0, 2), (1, 1)]
    (intersection,) = symmetrize_alignments(forward, reverse, "intersect")
    assert intersection.links == [(0, 0), (1, 1)] and intersection.forward_links == forward[0].links
    with pytest.raises(ValueError, match="different sentences"):
        symmetrize_alignments(forward, [pair(["x"], ["a", "b"], [])], "union")


def test_select_layer_finds_the_layer_that_made_the_gold(tokenizer):
    torch.manual_seed(0)
    model = Transformer(tiny_config(), tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()
    sources = ["Ein Hund rennt im Park.", "Zwei Männer spielen Fußball."]
    targets = ["A dog runs in the park.", "Two men play soccer."]
    made = align(model, tokenizer, sources, targets, method="shift", layer=1)
    links = [set(a.links) for a in made]
    gold = GoldAlignment("de", "en", sources, targets, links, links)
    best, aers = select_layer(model, tokenizer, gold, method="shift")
    assert aers[1] == 0.0 and aers[best] == 0.0 and len(aers) == 2
