"""Corpus fetching and checks, token-budget batching, and the sacreBLEU wrapper."""

import gzip
import random

import pytest
import sacrebleu
import torch

from mt.data import batching

from mt.data import corpora
from mt.errors import DataError
from mt.inference.evaluate import score


def test_token_batches_cover_every_pair_once_within_budget():
    rng = random.Random(0)
    src = [rng.randint(1, 40) for _ in range(500)]
    tgt = [rng.randint(1, 40) for _ in range(500)]
    for shuffle in (False, True):
        batches = batching.token_batches(src, tgt, batch_tokens=200, shuffle=shuffle, seed=3)
        assert sorted(i for b in batches for i in b) == list(range(500))
        for b in batches:
            assert len(b) * max(max(src[i], tgt[i]) + 1 for i in b) <= 200


def test_token_batches_group_similar_lengths_and_shuffle_deterministically():
    src = list(range(1, 101))
    batches = batching.token_batches(src, src, batch_tokens=120, shuffle=False)
    spans = [max(src[i] for i in b) - min(src[i] for i in b) for b in batches]
    assert max(spans) <= 10
    assert batching.token_batches(src, src, 120, True, seed=1) == batching.token_batches(src, src, 120, True, seed=1)
    assert batching.token_batches(src, src, 120, True, seed=1) != batching.token_batches(src, src, 120, True, seed=2)


def test_collate_adds_specials_and_pads():
    batch = batching.collate([[5, 6], [7]], [[8], [9, 10, 11]], [0, 1])
    assert batch.src_ids.tolist() == [[5, 6, 3], [7, 3, 0]]
    assert batch.tgt_in.tolist() == [[2, 8, 0, 0], [2, 9, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, 3, 0, 0], [9, 10, 11, 3]]
    assert batch.n_tgt_tokens == 6


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def test_multi30k_from_mirror_is_copied_once_and_checked(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setitem(corpora.MULTI30K_LINES, "val", 3)
    _write_gz(mirror / "val.de.gz", ["Ein Hund.", "Zwei Katzen.", "Ein Haus."])
    _write_gz(mirror / "val.en.gz", ["A dog.", "Two cats.", "A house."])
    split = corpora.load_split("val", "de", "en", tmp_path / "data", mirror, max_sentences=2)
    assert split["src"] == ["Ein Hund.", "Zwei Katzen."] and split["tgt"] == ["A dog.", "Two cats."]
    assert (tmp_path / "data" / "multi30k" / "val.de.gz").exists()
    (mirror / "val.de.gz").unlink()  # the copy in data/ is used from now on
    assert len(corpora.load_split("val", "de", "en", tmp_path / "data", mirror)) == 3


def test_mismatched_line_counts_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setitem(corpora.MULTI30K_LINES, "val", 3)
    _write_gz(tmp_path / "val.de.gz", ["a", "b", "c"])
    _write_gz(tmp_path / "val.en.gz", ["a", "b"])
    with pytest.raises(DataError, match=r"val\.en\.gz has 2 lines.*3"):
        corpora.load_split("val", "de", "en", tmp_path / "data", tmp_path)


def test_missing_mirror_file_and_missing_split_side(tmp_path):
    with pytest.raises(DataError, match="not found in the Multi30k mirror"):
        corpora.multi30k_file("train", "de", tmp_path / "data", tmp_path)
    with pytest.raises(DataError, match="no 'cs' side"):
        corpora.multi30k_file("test_2017_flickr", "cs", tmp_path / "data", tmp_path)
    with pytest.raises(DataError, match="no split"):
        corpora.multi30k_file("dev", "de", tmp_path / "data", tmp_path)


def test_no_network_and_no_mirror_says_what_to_do(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(corpora.urllib.request, "urlopen", offline)
    with pytest.raises(DataError, match="MT_DATA_MIRROR"):
        corpora.multi30k_file("val", "de", tmp_path / "data", None)


def test_real_multi30k_split_loads_with_expected_counts(tmp_path, multi30k_mirror):
    split = corpora.load_split("test_2016_flickr", "de", "en", tmp_path / "data", multi30k_mirror)
    assert len(split) == 1000
    assert split["src"][0] and split["tgt"][0]


def test_score_matches_sacrebleu_called_directly():
    hyps = ["A dog runs in the park.", "Two men are playing soccer .", "Nothing here"]
    refs = ["A dog is running in the park.", "Two men play soccer.", "Something else"]
    scores = score(hyps, refs)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert "tok:13a" in scores["bleu_signature"] and "case:mixed" in scores["bleu_signature"]
    assert scores["bleu_line"].startswith("BLEU = ") and scores["chrf_line"].startswith("chrF2 = ")
    assert scores["n_sentences"] == 3
    with pytest.raises(ValueError):
        score(hyps, refs[:2])


def test_sequence_loss_counts_only_real_tokens(tiny_model):
    from mt.training.objective import sequence_loss

    batch = batching.collate([[5, 6, 7], [8]], [[9, 10], [11, 12, 13, 14]], [0, 1])
    loss, n_tokens = sequence_loss(tiny_model, batch, label_smoothing=0.0)
    assert n_tokens == 8
    logits = tiny_model(batch.src_ids, batch.tgt_in)
    real = batch.tgt_out != 0
    expected = torch.nn.functional.cross_entropy(logits[real], batch.tgt_out[real], reduction="sum")
    assert torch.allclose(loss, expected, atol=1e-4)
