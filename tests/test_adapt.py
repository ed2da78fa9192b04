"""The aligner adapts its lexicon to the pairs it aligns (mt/alignment/adapt.py): the extra
counts are exactly the teacher's links of those pairs, they go away afterwards, they move the
alignment towards those links, and eflomal's priors carry what it learnt to new text."""

import dataclasses
import gzip
import random

import numpy as np
import pytest
import torch

from mt.alignment import adapt
from mt.alignment.adapt import Teacher, adapted
from mt.alignment.align import align
from mt.alignment.symmetrize import symmetrize
from mt.config import AlignerConfig
from mt.data.batching import collate
from mt.data.words import segment
from mt.model.aligner import Lexicon
from mt.model.transformer import Transformer

from conftest import VOCAB, tiny_config
from test_aligner import LEXICON_PAIRS

TEACHER = Teacher(gzip.compress(b""), "word", "grow-diag-final-and", weight=2.5)


def lexicon_of(pairs) -> Lexicon:
    lexicon = Lexicon(VOCAB, VOCAB)
    src, tgt, links = zip(*pairs)
    lexicon.count(src, tgt, [np.array(l).reshape(-1, 2) for l in links], 3, null=True)
    return lexicon


def biases(lexicon: Lexicon) -> torch.Tensor:
    batch = collate([[5, 8, 9], [6, 7]], [[10, 12, 13], [11]], [0, 1])
    with torch.no_grad():
        return lexicon(batch.src_ids, batch.tgt_out)


def test_extra_counts_are_those_of_counting_every_pair_and_go_away_after():
    stored, extra = LEXICON_PAIRS[:2], LEXICON_PAIRS[3:]  # (pair 2 copies pair 0)
    lexicon, everything = lexicon_of(stored), lexicon_of(stored + extra)
    before = biases(lexicon)
    added = lexicon_of(extra)
    with lexicon.extra_counts(added.keys, added.counts, torch.nonzero(added.source_counts)[:, 0],
                              added.source_counts[added.source_counts > 0]):  # fmt: skip
        torch.testing.assert_close(biases(lexicon), biases(everything))
        assert not torch.equal(biases(lexicon), before)
    assert torch.equal(biases(lexicon), before)


def aligner_model(tokenizer) -> Transformer:
    torch.manual_seed(0)
    aligner = AlignerConfig(enabled=True, n_layers=1, n_heads=2, align_heads=1, ffn_dim=64, dropout=0.0, lexicon=True)
    cfg = tiny_config(aligner=aligner)
    return Transformer(cfg, tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.pad_id).eval()


SOURCES, TARGETS = ["Zwei Männer spielen Fußball."], ["Two men play soccer."]
# the stand-in teacher links the words crosswise, which nothing else would: (src word, tgt word)
CROSSWISE = [(0, 3), (1, 2), (2, 1), (3, 0)]


@pytest.fixture
def model_and_tokenizer(bilingual_tokenizer, monkeypatch):
    """An aligner whose lexicon counted one training pair, and an eflomal stand-in that links
    the pair it is given crosswise (both directions alike, so any symmetrization keeps them)."""
    model = aligner_model(bilingual_tokenizer)
    segmentation = segment(bilingual_tokenizer, ["Ein Hund rennt im Park."], ["A dog runs in the park."], 63)[0]
    src = [p.id for p in segmentation.src_pieces]
    tgt = [p.id for p in segmentation.tgt_pieces]
    model.aligner.lexicon.count([src], [tgt], [np.array([[0, 0], [1, 1]])], bilingual_tokenizer.eos_id, True)
    calls = []

    def stand_in(src_tokens, tgt_tokens, priors=None):
        calls.append((src_tokens, tgt_tokens, priors))
        links = [list(CROSSWISE) for _ in src_tokens]
        return links, links

    monkeypatch.setattr(adapt, "run_eflomal", stand_in)
    return model, bilingual_tokenizer, calls


def piece_counts(segmentation, word_links, eos: int) -> dict[tuple[int, int], float]:
    """c(s, t) of one pair the slow way: each target piece's links share one unit, pieces owned
    through the segmentation's pooling matrices; unlinked target pieces (and EOS) count to the source EOS."""
    src_word = {k: int(np.argmax(row)) for k, row in enumerate(segmentation.src_pool[:-1]) if row.any()}
    tgt_word = {k: int(np.argmax(col)) for k, col in enumerate(segmentation.tgt_pool.T) if col.any()}
    src_ids = [p.id for p in segmentation.src_pieces]
    tgt_ids = [p.id for p in segmentation.tgt_pieces] + [eos]
    counts: dict[tuple[int, int], float] = {}
    for t, t_id in enumerate(tgt_ids):
        sources = [s for s in src_word for i, j in word_links if src_word[s] == i and tgt_word.get(t) == j]
        for s in sources:
            counts[src_ids[s], t_id] = counts.get((src_ids[s], t_id), 0.0) + 1 / len(sources)
        if not sources:
            counts[eos, t_id] = counts.get((eos, t_id), 0.0) + 1.0
    return counts


def table(lexicon: Lexicon) -> dict[tuple[int, int], float]:
    return {divmod(k, lexicon.tgt_vocab): v for k, v in zip(lexicon.keys.tolist(), lexicon.counts.tolist())}


def test_the_lexicon_adds_the_teachers_links_of_the_pairs_for_the_block_only(model_and_tokenizer):
    model, tokenizer, calls = model_and_tokenizer
    lexicon = model.aligner.lexicon
    stored, stored_sources = table(lexicon), lexicon.source_counts.clone()
    segmentations = segment(tokenizer, SOURCES, TARGETS, 63)
    with adapted(model, tokenizer, TEACHER, segmentations, SOURCES, TARGETS) as on:
        assert on == [sorted(CROSSWISE)]  # the teacher's word links of the same run, for Teacher.links
        [(src_tokens, tgt_tokens, priors)] = calls
        assert src_tokens == [SOURCES[0].split()] and tgt_tokens == [TARGETS[0].split()] and priors == []
        expected = dict(stored)
        for key, value in piece_counts(segmentations[0], CROSSWISE, tokenizer.eos_id).items():
            expected[key] = expected.get(key, 0.0) + TEACHER.weight * value
        assert table(lexicon) == pytest.approx(expected)
        added = lexicon.source_counts - stored_sources
        for s in range(len(added)):
            new = piece_counts(segmentations[0], CROSSWISE, tokenizer.eos_id)
            assert float(added[s]) == pytest.approx(TEACHER.weight * sum(v for (s2, _), v in new.items() if s2 == s))
    assert table(lexicon) == stored and torch.equal(lexicon.source_counts, stored_sources)


def test_nothing_is_adapted_without_a_teacher_or_below_the_floor(model_and_tokenizer):
    model, tokenizer, calls = model_and_tokenizer
    segmentations = segment(tokenizer, SOURCES, TARGETS, 63)
    stored = table(model.aligner.lexicon)
    for teacher, floor in ((None, 1), (TEACHER, 2)):
        with adapted(model, tokenizer, teacher, segmentations, SOURCES, TARGETS, min_pairs=floor) as on:
            assert on is None and table(model.aligner.lexicon) == stored
    assert calls == []


def test_adapting_moves_the_alignment_towards_the_teachers_links(model_and_tokenizer):
    model, tokenizer, _ = model_and_tokenizer
    plain = align(model, tokenizer, SOURCES, TARGETS, method="aligner")[0]
    adapted_pair = align(model, tokenizer, SOURCES, TARGETS, method="aligner", teacher=TEACHER)[0]
    # each target word puts more of its mass on the source word the teacher linked it to
    for i, j in CROSSWISE:
        assert adapted_pair.word_matrix[j, i] > plain.word_matrix[j, i] + 0.05, (i, j)
    assert align(model, tokenizer, SOURCES, TARGETS, method="aligner")[0].links == plain.links  # and no trace after


@pytest.mark.integration
def test_eflomals_priors_align_new_pairs_as_the_text_they_were_learnt_from():
    """A toy language whose word order is reversed and whose words map one to one: from priors
    learnt on 300 pairs alone, eflomal reverses 20 new pairs of the same words."""
    pytest.importorskip("eflomal")
    from mt.alignment.targets import eflomal_priors, run_eflomal

    rng = random.Random(0)
    words = [f"w{k}" for k in range(40)]

    def pair():
        src = rng.sample(words, rng.randint(3, 7))
        return src, [w.upper() + "x" for w in reversed(src)]

    learnt = [pair() for _ in range(300)]
    forward, reverse = run_eflomal([s for s, _ in learnt], [t for _, t in learnt])
    priors = eflomal_priors([s for s, _ in learnt], [t for _, t in learnt], forward, reverse)
    assert priors.startswith("LEX\t") and "LEX\tw1\tw1x\t" in priors  # lowercased, as eflomal reads tokens
    new = [pair() for _ in range(20)]
    forward, reverse = run_eflomal([s for s, _ in new], [t for _, t in new], priors.splitlines(True))
    for (src, _), links in zip(new, forward):
        reversed_links = {(i, len(src) - 1 - i) for i in range(len(src))}
        assert len(set(links) & reversed_links) >= len(src) - 1, (src, links)


@pytest.mark.parametrize("weight", ["0", "-1", "inf", "nan", "four"])
def test_a_bad_adapt_weight_is_a_usage_error_naming_the_flag(weight, capsys):
    from mt.cli import align_main

    with pytest.raises(SystemExit) as exit_info:
        align_main(["run", "Ein Hund .", "A dog .", "--adapt-weight", weight])
    assert exit_info.value.code == 2
    assert "argument --adapt-weight: must be a finite number > 0" in capsys.readouterr().err


def test_adapt_weight_and_links_reach_the_translators_teacher(monkeypatch):
    """mt-align --adapt-weight W: the loaded translator's teacher counts each new pair W times;
    --adapt-links chooses the links it gives out."""
    import mt
    from mt import cli

    class Loaded:
        teacher = TEACHER
        adapt = None
        decoding = None

        def with_defaults(self, *args):
            return None

    monkeypatch.setattr(mt, "load", lambda *args: Loaded())
    args = cli._align_arguments(["run", "Ein Hund .", "A dog .", "--adapt-weight", "7.5", "--no-adapt"])
    translator = cli._load(args)
    assert translator.teacher.weight == 7.5 and translator.teacher.priors == TEACHER.priors
    assert translator.adapt is False
    assert translator.teacher.links == "auto"  # the default
    args = cli._align_arguments(["run", "Ein Hund .", "A dog .", "--adapt-links", "intersect"])
    assert cli._load(args).teacher.links == "intersect"
    with pytest.raises(SystemExit):  # not a heuristic: a usage error
        cli._align_arguments(["run", "Ein Hund .", "A dog .", "--adapt-links", "both"])


def test_adapt_links_combine_the_aligners_links_with_the_teachers_of_the_same_run(model_and_tokenizer):
    """--adapt-links: intersect keeps the adapted aligner's links that the teacher also makes,
    union adds the teacher's, grow-diag-final-and grows from the one into the other (the
    aligner's as the forward direction); the word matrix stays the aligner's."""
    model, tokenizer, _ = model_and_tokenizer
    own = align(model, tokenizer, SOURCES, TARGETS, method="aligner", teacher=dataclasses.replace(TEACHER, links="aligner"))[0]
    combined = {
        choice: align(model, tokenizer, SOURCES, TARGETS, method="aligner", teacher=dataclasses.replace(TEACHER, links=choice))[0]
        for choice in ("intersect", "union", "grow-diag-final-and")
    }
    assert combined["intersect"].links == sorted(set(own.links) & set(CROSSWISE))
    assert combined["union"].links == sorted(set(own.links) | set(CROSSWISE))
    assert combined["intersect"].links != combined["union"].links  # the aligner's own links are not the teacher's
    assert combined["grow-diag-final-and"].links == sorted(symmetrize(own.links, CROSSWISE, "grow-diag-final-and"))
    auto = align(model, tokenizer, SOURCES, TARGETS, method="aligner", teacher=TEACHER)[0]
    assert TEACHER.links == "auto" and auto.links == combined["grow-diag-final-and"].links  # the default
    # where a reverse model's links get symmetrized with these, auto gives the intersection
    assert TEACHER.for_symmetrizing().links == "intersect"
    assert dataclasses.replace(TEACHER, links="intersect").for_symmetrizing().links == "intersect"  # a choice stays
    for pair in combined.values():
        np.testing.assert_array_equal(pair.word_matrix, own.word_matrix)


def test_the_reverse_checkpoint_gets_the_adapt_flags_too(monkeypatch):
    """mt-align --reverse-checkpoint: the reverse model adapts with the same --adapt, --adapt-weight
    and --adapt-links as the forward one (it used to keep its defaults)."""
    import mt
    from mt import cli

    class Stop(Exception):
        pass

    loaded = []

    class Loaded:
        def __init__(self):
            self.teacher, self.adapt, self.decoding = TEACHER, None, None
            loaded.append(self)

        def with_defaults(self, *args):
            return None

        def check_reverse(self, reverse):
            pass

        @property
        def default_method(self):  # read right after the flags are set: stop there
            raise Stop

    monkeypatch.setattr(mt, "load", lambda *args, **kwargs: Loaded())
    with pytest.raises(Stop):
        cli.align_main(["fwd", "Ein Hund .", "A dog .", "--reverse-checkpoint", "rev", "--adapt",
                        "--adapt-weight", "3", "--adapt-links", "intersect"])  # fmt: skip
    forward, reverse = loaded
    for translator in (forward, reverse):
        assert translator.adapt is True
        assert (translator.teacher.weight, translator.teacher.links) == (3.0, "intersect")
