"""Alignment targets for guided alignment: word links → piece links on hand-made cases, the
links file's errors, the cache, the kept-pair bookkeeping of prepare_data, and eflomal end to end."""

from __future__ import annotations

import gzip
import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from mt.alignment import targets as alignment_targets
from mt.alignment.targets import (
    compute_links,
    load_links,
    piece_owners,
    piece_to_word_links,
    read_word_links,
    save_links,
    segmentation_piece_links,
    training_links,
    training_priors,
    unit_tokens,
    word_to_piece_links,
)
from mt.config import Config, DataConfig, TokenizerConfig, from_hydra
from mt.training.distributed import Context
from mt.errors import ConfigError, DataError
from mt.training.training_data import prepare_data
from mt.data.tokenizer import Piece
from mt.data.words import NO_WORD, piece_words, segment, words_of

from conftest import REPO


def pairs_of(links: np.ndarray) -> set[tuple[int, int]]:
    return {(int(s), int(t)) for s, t in links}


def grid(src_pieces, tgt_pieces) -> set[tuple[int, int]]:
    return {(s, t) for s in src_pieces for t in tgt_pieces}


# ------------------------------------------------------------------------------ config keys


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["++data.alignments=giza"], "data.alignments"),
        (["++data.alignments=file"], "data.alignments_path"),
        (["++data.alignments_symmetrize=gdfa"], "data.alignments_symmetrize"),
        (["++data.alignments_unit=char"], "data.alignments_unit"),
        (["data=files", "data.path=/corpus", "data.streaming=true", "++data.alignments=eflomal"], "data.alignments"),
    ],
)
def test_invalid_alignment_keys_name_their_key(overrides, key):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        composed = compose(config_name="train", overrides=overrides)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + "'") as error:
        from_hydra(composed)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------ word → piece links


def test_word_to_piece_links_links_every_piece_pair_and_drops_pieceless_words():
    # source words: 0 = pieces 0,1; 1 = piece 2; 2 = no piece. target words: 0 = piece 0; 1 = pieces 1,2
    links = word_to_piece_links([(0, 1), (1, 0), (2, 0)], src_owner=[0, 0, 1], tgt_owner=[0, 1, 1])
    assert links.dtype == np.int32 and links.shape == (5, 2)
    assert links.tolist() == [[0, 1], [0, 2], [1, 1], [1, 2], [2, 0]]  # (2, 0) vanished
    assert word_to_piece_links([], [0], [0]).shape == (0, 2)
    assert piece_to_word_links(links, [0, 0, 1], [0, 1, 1]) == {(0, 1), (1, 0)}
    assert piece_to_word_links(np.array([[0, 0]]), [NO_WORD], [0]) == set()


def test_pieces_of_the_fixture_tokenizer(bilingual_tokenizer):
    """The pieces the hand-worked cases below rely on (a 60-piece model: mostly characters)."""
    pieces = lambda text: [p.piece for p in bilingual_tokenizer.src_pieces(text)]  # noqa: E731
    assert pieces("Ein Hund rennt im Park.") == "▁ E i n ▁ H un d ▁r en n t ▁i m ▁ P a r k .".split()
    assert pieces("A dog runs in the park.") == "▁ A ▁ d o g ▁r un s ▁i n ▁ t h e ▁p a r k .".split()
    assert pieces("A dog , runs") == "▁ A ▁ d o g ▁ , ▁r un s".split()
    assert pieces("Hund\u200b \u200b rennt") == "▁ H un d ▁r en n t".split()


def test_split_words_and_glued_punctuation(bilingual_tokenizer):
    # src pieces: ▁0 E1 i2 n3 | ▁4 H5 un6 d7 | ▁r8 en9 n10 t11 | ▁i12 m13 | ▁14 P15 a16 r17 k18 .19
    # tgt pieces: ▁0 A1 | ▁2 d3 o4 g5 | ▁r6 un7 s8 | ▁i9 n10 | ▁11 t12 h13 e14 | ▁p15 a16 r17 k18 .19
    src, tgt = "Ein Hund rennt im Park.", "A dog runs in the park."
    owners = piece_owners(bilingual_tokenizer, src, tgt)
    assert len(owners[0]) == len(bilingual_tokenizer.encode_src([src])[0])  # positions of training's ids
    assert len(owners[1]) == len(bilingual_tokenizer.encode_tgt([tgt])[0])
    # Hund–dog: word split into 4 pieces each; Park.–park.: the glued "." piece belongs to the word
    links = word_to_piece_links([(1, 1), (4, 5)], *owners)
    assert pairs_of(links) == grid(range(4, 8), range(2, 6)) | grid(range(14, 20), range(15, 20))
    assert piece_to_word_links(links, *owners) == {(1, 1), (4, 5)}


def test_punctuation_split_off_by_whitespace_takes_its_space_piece(bilingual_tokenizer):
    # "A dog , runs": pieces ▁0 A1 | ▁2 d3 o4 g5 | ▁6 ,7 | ▁r8 un9 s10; the lone ▁ goes with ","
    src, tgt = "A dog , runs", "Ein Hund rennt im Park."
    links = word_to_piece_links([(2, 4), (1, 1)], *piece_owners(bilingual_tokenizer, src, tgt))
    assert pairs_of(links) == grid([6, 7], range(14, 20)) | grid(range(2, 6), range(4, 8))


def test_a_word_with_no_pieces_loses_its_links(bilingual_tokenizer):
    # "Hund\u200b \u200b rennt": the normalizer deletes U+200B, so word 1 owns no piece
    src, tgt = "Hund\u200b \u200b rennt", "A dog runs"
    owners = piece_owners(bilingual_tokenizer, src, tgt)
    assert owners[0] == [0, 0, 0, 0, 2, 2, 2, 2]
    links = word_to_piece_links([(1, 1), (2, 2)], *owners)  # (1, 1) has no source piece
    # tgt "A dog runs": ▁0 A1 | ▁2 d3 o4 g5 | ▁r6 un7 s8
    assert pairs_of(links) == grid(range(4, 8), range(6, 9))


def test_the_piece_after_a_deleted_word_belongs_to_the_next_word():
    # sentencepiece's span of "▁r" holds the space and U+200B before it: the last character decides
    text = "Hund \u200b rennt"
    pieces = [Piece(5, "▁Hund", 0, 4), Piece(6, "▁r", 4, 8), Piece(7, "ennt", 8, 12), Piece(8, "▁", 12, 12)]
    assert piece_words(pieces, words_of(text)[1]) == [0, 2, 2, 2]


def test_segmentation_path_gives_the_same_links(bilingual_tokenizer):
    src, tgt = "Ein Hund rennt im Park.", "A dog runs in the park."
    word_links = [(0, 0), (1, 1), (2, 2), (4, 5)]
    (segmentation,) = segment(bilingual_tokenizer, [src], [tgt], max_pieces=64)
    direct = word_to_piece_links(word_links, *piece_owners(bilingual_tokenizer, src, tgt))
    np.testing.assert_array_equal(segmentation_piece_links(segmentation, word_links), direct)
    (truncated,) = segment(bilingual_tokenizer, [src], [tgt], max_pieces=8)  # pieces past 8 get no link
    assert pairs_of(segmentation_piece_links(truncated, word_links)) == {(s, t) for s, t in pairs_of(direct) if s < 8 and t < 8}


def test_piece_tokens_are_the_training_pieces(bilingual_tokenizer):
    src_tokens, tgt_tokens = unit_tokens(bilingual_tokenizer, ["A dog , runs"], ["Hund\u200b \u200b rennt"], "piece")
    assert bilingual_tokenizer.encode_src(["A dog , runs"])[0][7] == bilingual_tokenizer.unk_id
    assert src_tokens == ["▁ A ▁ d o g ▁ , ▁r un s".split()]  # the unknown "," keeps its surface
    assert tgt_tokens == ["▁ H un d ▁r en n t".split()]
    assert unit_tokens(bilingual_tokenizer, ["A dog , runs"], ["x"], "word") == ([["A", "dog", ",", "runs"]], [["x"]])
    with pytest.raises(ValueError, match="piece, word"):
        unit_tokens(bilingual_tokenizer, [], [], "char")


# ------------------------------------------------------------------------------ links file

SRC = ["a b c", "d e", "f"]
TGT = ["A B", "C D E", "F"]


def test_links_file_blank_lines_are_pairs_without_links(tmp_path):
    path = tmp_path / "links.txt"
    path.write_text("0-0 2-1\n\n0-0\n")
    assert read_word_links(path, SRC, TGT) == [[(0, 0), (2, 1)], [], [(0, 0)]]
    path.write_text("0-0 2-1\n")  # covers only the first pair: allowed when n_first says so
    assert read_word_links(path, SRC, TGT, n_first=1) == [[(0, 0), (2, 1)], [], []]


def test_links_on_the_lines_of_gold_copies_are_refused(tmp_path):
    """Pairs after ``n_first`` are gold copies (data.alignment_gold_train_copies): their lines
    must be blank, since gold links are never trained on."""
    path = tmp_path / "links.txt"
    path.write_text("0-0 2-1\n\n\n")
    assert read_word_links(path, SRC, TGT, n_first=1) == [[(0, 0), (2, 1)], [], []]
    path.write_text("0-0 2-1\n\n0-0\n")
    assert read_word_links(path, SRC, TGT) == [[(0, 0), (2, 1)], [], [(0, 0)]]  # no copies: every line is a pair's
    with pytest.raises(DataError, match=r"links\.txt:3: links on a line of the gold copies") as error:
        read_word_links(path, SRC, TGT, n_first=1)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "text, message",
    [
        ("0-0\n1-3\n\n", r"links\.txt:2: link 1-3 is outside a 2×3-word pair"),
        ("0-0\n\n1-0\n", r"links\.txt:3: link 1-0 is outside a 1×1-word pair"),
        ("0-0\n0-x\n\n", r"links\.txt:2: not a Pharaoh link"),
        ("0-0\n\n", r"links\.txt:2: the file has 2 lines, but the training split has 3 pairs"),
        ("0-0\n\n\n\n", r"links\.txt:4: the file has 4 lines, but the training split has 3 pairs"),
        ("", r"links\.txt: the file has 0 lines"),
    ],
)
def test_links_file_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "links.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_word_links(path, SRC, TGT)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------ cache


def fake_eflomal(calls: list):
    """A stand-in aligner: token i ↔ token i in both directions; records its inputs."""

    def run(src_tokens, tgt_tokens):
        calls.append((src_tokens, tgt_tokens))
        diagonal = [[(i, i) for i in range(min(len(s), len(t)))] for s, t in zip(src_tokens, tgt_tokens)]
        return diagonal, diagonal

    return run


@pytest.fixture
def fake_aligner(monkeypatch):
    calls = []
    monkeypatch.setattr(alignment_targets, "_import_eflomal", lambda: None)
    monkeypatch.setattr(alignment_targets, "run_eflomal", fake_eflomal(calls))
    # the priors of the links, as text that names the pairs' first words
    monkeypatch.setattr(alignment_targets, "eflomal_priors", lambda src, tgt, fwd, rev: f"LEX\t{src[0][0]}\t{tgt[0][0]}\t1\n")
    return calls


def test_save_and_load_links_round_trip(tmp_path):
    links = [np.array([[0, 1], [2, 3]]), np.zeros((0, 2), int), np.array([[40000, 5]])]
    save_links(links, tmp_path / "a.npz")
    loaded = load_links(tmp_path / "a.npz")
    assert [pair.tolist() for pair in loaded] == [pair.tolist() for pair in links]
    assert all(pair.dtype == np.int64 for pair in loaded)
    save_links(links[:2], tmp_path / "b.npz")
    assert np.load(tmp_path / "b.npz")["links"].dtype == np.int16  # stored compactly when indexes fit
    save_links([], tmp_path / "c.npz")
    assert load_links(tmp_path / "c.npz") == []


def test_second_call_reads_the_cache(bilingual_tokenizer, fake_aligner, monkeypatch, tmp_path):
    cfg = DataConfig(alignments="eflomal", alignments_unit="word")
    src, tgt = ["Ein Hund rennt", "Zwei Männer"], ["A dog runs", "Two men"]
    first = training_links(cfg, src, tgt, bilingual_tokenizer, [0, 1], tmp_path)
    assert len(fake_aligner) == 1 and len(list(tmp_path.glob("alignments-*.npz"))) == 1
    # the priors of those links are cached beside them, for the aligner's checkpoints
    assert gzip.decompress(training_priors(cfg, src, tgt, bilingual_tokenizer, tmp_path)) == b"LEX\tEin\tA\t1\n"
    assert training_priors(cfg, src, ["A dog runs", "Two men ."], bilingual_tokenizer, tmp_path) is None  # not computed
    monkeypatch.setattr(alignment_targets, "run_eflomal", lambda *args: pytest.fail("eflomal ran again"))
    second = training_links(cfg, src, tgt, bilingual_tokenizer, [0, 1], tmp_path)
    assert [pair.tolist() for pair in second] == [pair.tolist() for pair in first]
    assert [pair.tolist() for pair in training_links(cfg, src, tgt, bilingual_tokenizer, [1], tmp_path)] == [first[1].tolist()]
    # other settings, another tokenizer model or other text: another cache entry
    monkeypatch.setattr(alignment_targets, "run_eflomal", fake_eflomal(fake_aligner))
    training_links(DataConfig(alignments="eflomal", alignments_unit="piece"), src, tgt, bilingual_tokenizer, [0], tmp_path)
    training_links(cfg, src, ["A dog runs", "Two men ."], bilingual_tokenizer, [0], tmp_path)
    assert len(fake_aligner) == 3 and len(list(tmp_path.glob("alignments-*.npz"))) == 3
    assert training_links(DataConfig(), src, tgt, bilingual_tokenizer, [0], tmp_path) is None


def test_missing_eflomal_is_one_line_naming_the_key(bilingual_tokenizer, monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def no_eflomal(name, *args, **kwargs):
        if name == "eflomal":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_eflomal)
    with pytest.raises(ConfigError, match=r"'data\.alignments' = 'eflomal'.*pip install") as error:
        training_links(DataConfig(alignments="eflomal"), ["a"], ["b"], bilingual_tokenizer, [0], tmp_path)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------ prepare_data

TRAIN = [
    ("Ein Hund rennt im Park.", "A dog runs in the park."),
    ("Ein Hund rennt im Park und zwei Männer spielen Fußball im Park.", "A dog runs in the park and two men play soccer."),
    ("", ""),  # empty: dropped
    ("Zwei Männer spielen Fußball.", "Two men play soccer."),
]
LINKS = ["0-0 1-1 2-2 3-3 4-5", "0-0 11-10", "", "0-0 1-1 2-2 3-3"]


def write_corpus(folder, gold_prefix=None):
    for split, pairs in (("train", TRAIN), ("valid", TRAIN[:1]), ("test", TRAIN[:1])):
        (folder / f"{split}.de").write_text("".join(src + "\n" for src, _ in pairs))
        (folder / f"{split}.en").write_text("".join(tgt + "\n" for _, tgt in pairs))
    if gold_prefix:
        (folder / f"{gold_prefix}.src-tgt").write_text("Zwei Hunde ||| Two dogs\n")
        (folder / f"{gold_prefix}.talp").write_text("1-2 2-1\n")  # crossing: never the fake aligner's


def run_config(folder, **data) -> Config:
    cfg = Config()
    cfg.data = DataConfig(
        source="files", name=None, path=str(folder), src_lang="de", tgt_lang="en", train_split="train",
        valid_split="valid", test_split="test", data_dir=str(folder / "data"), max_len=30, **data,
    )
    cfg.tokenizer = TokenizerConfig(vocab_size=60)
    cfg.model.max_positions = 64
    return cfg


def test_prepare_data_keeps_links_in_step_with_kept_pairs(tmp_path):
    write_corpus(tmp_path)
    (tmp_path / "links.txt").write_text("\n".join(LINKS) + "\n")
    data = prepare_data(run_config(tmp_path, alignments="file", alignments_path=str(tmp_path / "links.txt")), Context(), None)
    assert len(data.train_src) == 2  # the long pair (> 30 pieces) and the empty one were dropped
    assert len(data.train_links) == len(data.train_src)
    for k, i in enumerate([0, 3]):  # kept pair k is training pair i
        src, tgt = TRAIN[i]
        assert data.train_src[k] == data.tokenizer.encode_src([src])[0]
        word_links = [tuple(map(int, link.split("-"))) for link in LINKS[i].split()]
        expected = word_to_piece_links(word_links, *piece_owners(data.tokenizer, src, tgt))
        np.testing.assert_array_equal(data.train_links[k], expected)
        assert data.train_links[k][:, 0].max() < len(data.train_src[k])
        assert data.train_links[k][:, 1].max() < len(data.train_tgt[k])
    assert prepare_data(run_config(tmp_path), Context(), None).train_links is None


def test_gold_copies_get_aligner_links_never_gold_links(tmp_path, fake_aligner):
    write_corpus(tmp_path, gold_prefix="deen")
    gold = dict(alignment_gold=str(tmp_path / "deen"), alignment_gold_train_copies=2)
    data = prepare_data(run_config(tmp_path, alignments="eflomal", alignments_unit="word", **gold), Context(), None)
    (src_tokens, _), = fake_aligner
    assert src_tokens[-2:] == [["Zwei", "Hunde"], ["Zwei", "Hunde"]]  # the copies' text was aligned
    assert len(data.train_links) == len(data.train_src) == 4
    owners = piece_owners(data.tokenizer, "Zwei Hunde", "Two dogs")
    diagonal = word_to_piece_links([(0, 0), (1, 1)], *owners)  # the fake aligner's links, not the gold 0-1 1-0
    np.testing.assert_array_equal(data.train_links[-1], diagonal)
    # a links file may cover the corpus pairs only: the copies then get none
    (tmp_path / "links.txt").write_text("\n".join(LINKS) + "\n")
    data = prepare_data(run_config(tmp_path, alignments="file", alignments_path=str(tmp_path / "links.txt"), **gold), Context(), None)
    assert [len(pair) for pair in data.train_links[-2:]] == [0, 0]
    # one line per pair, the copies included: the copies' lines must hold no links
    (tmp_path / "links.txt").write_text("\n".join(LINKS + ["", "0-0 1-1"]) + "\n")
    with pytest.raises(DataError, match=r"links\.txt:6: links on a line of the gold copies"):
        prepare_data(run_config(tmp_path, alignments="file", alignments_path=str(tmp_path / "links.txt"), **gold), Context(), None)


# ------------------------------------------------------------------------------ eflomal end to end


def test_eflomal_aligns_multi30k_pairs(multi30k_mirror, tmp_path):
    pytest.importorskip("eflomal")
    from mt.data.corpora import load_split
    from mt.data.tokenizer import Tokenizer

    split = load_split("train", "de", "en", tmp_path, multi30k_mirror, max_sentences=200)
    src, tgt = list(split["src"]), list(split["tgt"])
    tokenizer = Tokenizer.train(src, tgt, TokenizerConfig(vocab_size=500))
    for unit in ("word", "piece"):
        links = compute_links(DataConfig(alignments="eflomal", alignments_unit=unit), src, tgt, tokenizer)
        assert len(links) == 200
        assert sum(len(pair) > 0 for pair in links) >= 190
        for pair, src_ids, tgt_ids in zip(links, tokenizer.encode_src(src), tokenizer.encode_tgt(tgt)):
            assert pair.shape[1] == 2 and pair.dtype == np.int32
            if len(pair):
                assert pair[:, 0].max() < len(src_ids) and pair[:, 1].max() < len(tgt_ids)
