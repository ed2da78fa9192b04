"""The aligner on top of a frozen model (mt/model/aligner.py): its masks, its loss, that it learns a
toy alignment, and that training it leaves every other weight as it was."""

import math
import random

import numpy as np

import pytest
import torch

from mt.alignment.aer import score_alignments
from mt.data.batching import collate
from mt.config import AlignerConfig
from mt.data.tokenizer import Tokenizer
from mt.model.transformer import Transformer
from mt.model.aligner import null_targets
from mt.training.objective import Objective, agreement_loss, alignment_loss, swapped_pair

from conftest import VOCAB, tiny_config

ALIGNER = AlignerConfig(enabled=True, n_layers=1, n_heads=2, align_heads=1, ffn_dim=64, dropout=0.0)


def aligner_model(seed: int = 0, **aligner) -> Transformer:
    torch.manual_seed(seed)
    cfg = tiny_config(aligner=AlignerConfig(**{**vars(ALIGNER), **aligner}))
    return Transformer(cfg, VOCAB, VOCAB, pad_id=0).eval()


@pytest.mark.parametrize("inputs", ["shift", "predict", "both"])
def test_rows_sum_to_one_over_real_source_and_ignore_padding(inputs):
    model = aligner_model(inputs=inputs)
    batch = collate([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14]], [0, 1])
    with torch.no_grad():
        weights = model.aligner_attention(batch.src_ids, batch.tgt_in)  # (batch, tgt_len, src_len)
        alone = model.aligner_attention(batch.src_ids[1:, :3], batch.tgt_in[1:, :2])  # pair 1 without padding
    assert weights.shape == (2, 4, 5)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    assert torch.all(weights[1, :, 3:] == 0)  # padded source columns get nothing
    # the padded batch gives the pair's rows as the pair alone does (the full-context layer and
    # the shifted rows must not read padding)
    torch.testing.assert_close(weights[1, :2, :3], alone[0], atol=1e-5, rtol=1e-4)


def test_frozen_objective_is_the_aligners_loss_and_reaches_only_the_aligner():
    model = aligner_model()
    batch = collate([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], [0, 1], links=[[(0, 0), (2, 1)], [(1, 2)]])
    objective = Objective(model, 0.1, alignment_weight=0.5, frozen=True)
    total, terms, n_tokens = objective(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
    # with null (the default), unlinked real rows (here the EOS rows and pair 1's first two) target the source EOS
    targets = null_targets(batch.alignment, batch.src_ids != 0, batch.tgt_out != 0)
    expected = alignment_loss(model.aligner_attention(batch.src_ids, batch.tgt_in), targets)
    assert terms.keys() == {"align"} and n_tokens == 3 + 4
    torch.testing.assert_close(terms["align"], expected)
    torch.testing.assert_close(total, 0.5 * expected)
    total.backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("aligner."), name
    # unfrozen: the cross-entropy of the same pass as well, and still no gradient of the
    # aligner's term reaches the translation model
    model.zero_grad()
    joint = Objective(model, 0.1, alignment_weight=0.5)
    _, joint_terms, _ = joint(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
    plain_total, plain_terms, _ = Objective(model, 0.1)(batch.src_ids, batch.tgt_in, batch.tgt_out)
    torch.testing.assert_close(joint_terms["xent"], plain_terms["xent"])
    joint_terms["align"].backward()
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("aligner."))


def test_the_swapped_pair_is_the_batch_of_the_pieces_the_other_way_round():
    src, tgt = [[5, 6, 7, 8], [9, 10], [11]], [[12, 13], [14, 15, 16], [17, 18, 19, 20, 21]]
    batch, other_way = collate(src, tgt, [0, 1, 2]), collate(tgt, src, [0, 1, 2])
    rev_src, rev_tgt_in = swapped_pair(batch.src_ids, batch.tgt_out)
    assert torch.equal(rev_src, other_way.src_ids)
    assert torch.equal(rev_tgt_in, other_way.tgt_in)


def test_agreement_loss_is_the_naive_sum_over_real_pieces_only():
    torch.manual_seed(0)
    batch = collate([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14]], [0, 1])  # src_len 5, tgt_len 4
    forward, reverse = torch.rand(2, 4, 5), torch.rand(2, 5, 4)
    naive = 0.0
    for b, (m, n) in enumerate([(4, 3), (2, 1)]):  # real source and target pieces, EOS excluded
        for t in range(n):
            for s in range(m):
                naive += (forward[b, t, s] - reverse[b, s, t]).item() ** 2
    loss = agreement_loss(forward, reverse, batch.src_ids, batch.tgt_out)
    assert loss.item() == pytest.approx(naive, rel=1e-5)
    # EOS rows and columns and padding count for nothing: perturbing them leaves the loss alone
    real = ((batch.tgt_out != 0) & (batch.tgt_out != Tokenizer.eos_id))[:, :, None] & (
        (batch.src_ids != 0) & (batch.src_ids != Tokenizer.eos_id)
    )[:, None, :]
    noisy_forward = torch.where(real, forward, torch.rand(2, 4, 5))
    noisy_reverse = torch.where(real.transpose(1, 2), reverse, torch.rand(2, 5, 4))
    assert agreement_loss(noisy_forward, noisy_reverse, batch.src_ids, batch.tgt_out).item() == pytest.approx(naive, rel=1e-5)
    # two directions that agree on every real cell cost nothing
    agreeing = torch.where(real.transpose(1, 2), forward.transpose(1, 2), reverse)
    assert agreement_loss(forward, agreeing, batch.src_ids, batch.tgt_out).item() == 0.0


def test_the_agreement_term_compares_with_the_partners_aligner_and_trains_only_this_aligner():
    model, partner = aligner_model(seed=0), aligner_model(seed=1).requires_grad_(False)
    batch = collate([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], [0, 1], links=[[(0, 0), (2, 1)], [(1, 2)]])
    objective = Objective(model, 0.1, alignment_weight=0.5, frozen=True, partner=partner, agreement_weight=2.0)
    total, terms, n_tokens = objective(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
    rev_src, rev_tgt_in = swapped_pair(batch.src_ids, batch.tgt_out)
    forward = model.aligner_attention(batch.src_ids, batch.tgt_in)  # (2, 4, 4)
    with torch.no_grad():
        reverse = partner.aligner_attention(rev_src, rev_tgt_in)  # the partner reads the swapped pair
    expected = agreement_loss(forward, reverse, batch.src_ids, batch.tgt_out)
    assert terms.keys() == {"align", "agree"} and n_tokens == 3 + 4
    assert expected > 0
    torch.testing.assert_close(terms["agree"], expected)
    torch.testing.assert_close(total, 0.5 * terms["align"] + 2.0 * expected)
    total.backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == name.startswith("aligner."), name
    assert all(p.grad is None for p in partner.parameters())


def test_null_targets_point_unlinked_real_rows_at_the_source_eos():
    batch = collate([[5, 6, 7], [8]], [[10, 11], [12, 13, 14]], [0, 1], links=[[(0, 0), (2, 0)], [(0, 1)]])
    targets = null_targets(batch.alignment, batch.src_ids != 0, batch.tgt_out != 0)
    expected = torch.zeros(2, 4, 4)
    expected[0, 0, 0] = expected[0, 0, 2] = 0.5  # linked rows unchanged
    expected[0, 1, 3] = expected[0, 2, 3] = 1.0  # piece 11 and EOS: to pair 0's EOS (position 3)
    expected[1, 1, 0] = 1.0
    expected[1, 0, 1] = expected[1, 2, 1] = expected[1, 3, 1] = 1.0  # pair 1's EOS is at position 1; no padding rows
    assert torch.equal(targets, expected)


def test_null_extraction_leaves_a_word_whose_eos_mass_wins_unaligned(bilingual_tokenizer):
    import numpy as np

    from mt.alignment.align import aligner_word_links
    from mt.data.words import segment

    (seg,) = segment(bilingual_tokenizer, ["Ein Hund"], ["A dog"], 60)
    n_src, n_tgt = len(seg.src_pieces), len(seg.tgt_pieces)
    matrix = np.zeros((n_tgt + 1, n_src + 1), np.float32)
    matrix[:, -1] = 0.7  # every piece: mostly NULL …
    matrix[:, 0] = 0.3  # … and the rest on the first source piece ("Ein")
    last_word = [t for t in range(n_tgt) if seg.tgt_pool[1, t] > 0]
    matrix[last_word, -1], matrix[last_word, -2] = 0.1, 0.9  # but "dog" on the last source piece ("Hund")
    (words,), (links,) = aligner_word_links([seg], [matrix], null=True)
    assert links == [(1, 1)]  # "A" stays unaligned: NULL holds more of it than "Ein"
    (_,), (plain,) = aligner_word_links([seg], [matrix], null=False)
    assert plain == [(0, 0), (1, 1)] and np.allclose(words.sum(1), 1.0)


def test_diagonal_distance_by_hand():
    from mt.model.aligner import diagonal_distance

    src_mask = torch.tensor([[True, True, True, True, True], [True, True, True, False, False]])  # 4 pieces + EOS; 2 + EOS
    tgt_mask = torch.tensor([[True, True, True], [True, True, False]])  # BOS + 2 pieces; BOS + 1 piece
    distance = diagonal_distance(src_mask, tgt_mask)
    expected_0 = torch.tensor([[0.0, 0.25, 0.5, 0.75, 0.0], [0.5, 0.25, 0.0, 0.25, 0.0], [1.0, 0.75, 0.5, 0.25, 0.0]])
    torch.testing.assert_close(distance[0], expected_0)  # rows: pieces 0, 1 and EOS (j/n); the EOS column costs nothing
    torch.testing.assert_close(distance[1, :2, :3], torch.tensor([[0.0, 0.5, 0.0], [1.0, 0.5, 0.0]]))


def toy_pairs(n_pairs: int, seed: int) -> list[tuple[list[int], list[int], list[tuple[int, int]]]]:
    """Source: 3-7 distinct tokens of 5..24; target: their translations (token + 15) in reversed
    order, so source piece i aligns with target piece len - 1 - i."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n_pairs):
        src = rng.sample(range(5, 25), rng.randint(3, 7))
        tgt = [token + 15 for token in reversed(src)]
        pairs.append((src, tgt, [(i, len(src) - 1 - i) for i in range(len(src))]))
    return pairs


def test_aligner_learns_a_toy_permutation_on_a_frozen_random_model():
    model = aligner_model(seed=1)
    frozen = {name: p.detach().clone() for name, p in model.translation_parameters()}
    for _, parameter in model.translation_parameters():
        parameter.requires_grad_(False)
    model.aligner.train()
    objective = Objective(model, 0.0, alignment_weight=1.0, frozen=True)
    optimizer = torch.optim.AdamW(model.aligner.parameters(), lr=3e-3)
    train, test = toy_pairs(512, seed=2), toy_pairs(100, seed=3)
    torch.manual_seed(0)
    for step in range(300):
        chunk = [train[(step * 32 + k) % len(train)] for k in range(32)]
        batch = collate([s for s, _, _ in chunk], [t for _, t, _ in chunk], list(range(32)), [l for _, _, l in chunk])
        total, terms, n_tokens = objective(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
        optimizer.zero_grad()
        (total / n_tokens).backward()
        optimizer.step()
    model.eval()
    batch = collate([s for s, _, _ in test], [t for _, t, _ in test], list(range(len(test))))
    with torch.no_grad():
        weights = model.aligner_attention(batch.src_ids, batch.tgt_in)
    predicted = [
        {(int(weights[k, t, : len(src)].argmax()), t) for t in range(len(tgt))} for k, (src, tgt, _) in enumerate(test)
    ]
    gold = [set(links) for _, _, links in test]
    assert score_alignments(predicted, gold, gold).aer < 0.05
    for name, parameter in model.translation_parameters():
        assert torch.equal(parameter, frozen[name]), name


def test_html_view_opens_on_the_aligners_matrix(bilingual_tokenizer):
    import numpy as np

    from mt.alignment.align import align
    from mt.alignment.html_view import SCALE, view_data

    torch.manual_seed(0)
    cfg = tiny_config(aligner=ALIGNER)
    model = Transformer(cfg, bilingual_tokenizer.src_vocab_size, bilingual_tokenizer.tgt_vocab_size, 0).eval()
    (a,) = align(model, bilingual_tokenizer, ["Ein Hund rennt im Park."], ["A dog runs in the park."], method="aligner")
    data = view_data([a], "aligner", layer=0)
    assert data["layer"] == data["n_layers"] - 1 == 2 and data["layer_names"] == ["0", "1", "aligner"]
    shown = np.array(data["pairs"][0]["matrices"][data["layer"]][data["n_heads"]]) / SCALE  # what the page opens on
    np.testing.assert_allclose(shown, a.word_matrix, atol=0.5 / SCALE)


def naive_counts(pairs, null: bool) -> dict[tuple[int, int], float]:
    """c(s, t) the slow way: each distinct pair's G̃ (NULL rows included) summed by ids."""
    counts: dict[tuple[int, int], float] = {}
    distinct = {(tuple(src), tuple(tgt)): links for src, tgt, links in pairs}
    for (src, tgt), links in distinct.items():
        batch = collate([list(src)], [list(tgt)], [0], [links])
        targets = batch.alignment
        if null:
            targets = null_targets(targets, batch.src_ids != 0, batch.tgt_out != 0)
        for t, s in targets[0].nonzero().tolist():
            key = (int(batch.src_ids[0, s]), int(batch.tgt_out[0, t]))
            counts[key] = counts.get(key, 0.0) + float(targets[0, t, s])
    return counts


LEXICON_PAIRS = [
    ([5, 6, 7], [10, 11], [(0, 0), (2, 0)]),  # piece 11 unlinked (NULL)
    ([5, 8], [12, 10, 10], [(0, 1), (1, 0), (0, 2)]),  # a repeated target piece
    ([5, 6, 7], [10, 11], [(0, 0), (2, 0)]),  # a copy of the first pair: counted once
    ([9], [13], [(0, 0)]),
]


@pytest.mark.parametrize("null", [True, False])
def test_count_links_matches_summing_each_distinct_pairs_targets(null):
    from mt.model.aligner import count_links

    src, tgt, links = zip(*LEXICON_PAIRS)
    keys, counts, source_keys, source_counts = count_links(src, tgt, [torch.tensor(l).numpy() for l in links], 3, VOCAB, null)
    expected = naive_counts(LEXICON_PAIRS, null)
    assert sorted(keys.tolist()) == keys.tolist()
    assert {(k // VOCAB, k % VOCAB): v for k, v in zip(keys.tolist(), counts.tolist())} == pytest.approx(expected)
    sources = dict(zip(source_keys.tolist(), source_counts.tolist()))
    assert sources == pytest.approx({s: sum(v for (s2, _), v in expected.items() if s2 == s) for s, _ in expected})


def test_lexicon_biases_are_the_log_counts_of_the_pairs_pieces():
    """Bias of (target row t, source position i) = log(c(s_i, t) + 0.1) − log(c(s_i) + 1) at the
    initial weights, c summed the slow way (:func:`naive_counts`)."""
    from mt.model.aligner import Lexicon

    src, tgt, links = zip(*LEXICON_PAIRS)
    lexicon = Lexicon(VOCAB, VOCAB)
    lexicon.count(src, tgt, [torch.tensor(l).numpy() for l in links], 3, null=True)
    counts = naive_counts(LEXICON_PAIRS, null=True)
    batch = collate([[5, 8, 9], [6]], [[10, 12, 13], [11]], [0, 1])
    with torch.no_grad():
        biases = lexicon(batch.src_ids, batch.tgt_out)  # (batch, tgt_len, src_len)
    for b in range(2):
        for t, tgt_id in enumerate(batch.tgt_out[b].tolist()):
            for i, src_id in enumerate(batch.src_ids[b].tolist()):
                pair = counts.get((src_id, tgt_id), 0.0)
                source = sum(v for (s, _), v in counts.items() if s == src_id)
                expected = math.log(pair + 0.1) - math.log(source + 1)
                assert float(biases[b, t, i]) == pytest.approx(expected, rel=1e-5), (b, t, i)


def test_a_filled_lexicon_survives_the_state_dict_round_trip():
    from mt.model.aligner import target_pieces

    model = aligner_model(lexicon=True)
    src, tgt, links = zip(*LEXICON_PAIRS)
    model.aligner.lexicon.count(src, tgt, [torch.tensor(l).numpy() for l in links], 3, True)
    batch = collate([list(s) for s in src], [list(t) for t in tgt], [0, 1, 2, 3])
    assert torch.equal(target_pieces(batch.tgt_in, 0, 3), batch.tgt_out)
    fresh = aligner_model(seed=5, lexicon=True)
    with pytest.raises(ValueError, match="no counts"):
        fresh.aligner_attention(batch.src_ids, batch.tgt_in)
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh.aligner_attention(batch.src_ids, batch.tgt_in), model.aligner_attention(batch.src_ids, batch.tgt_in))


def test_reusing_the_searchs_encoder_outputs_gives_the_same_alignment():
    from mt.alignment.teacher_forced import teacher_forced_aligner

    model = aligner_model()
    src_ids, tgt_ids = [[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14]]
    batch = collate(src_ids, tgt_ids, [0, 1])
    states = []
    with torch.no_grad():
        model.encode(batch.src_ids, states)
        torch.testing.assert_close(
            model.aligner_attention(batch.src_ids, batch.tgt_in, states), model.aligner_attention(batch.src_ids, batch.tgt_in)
        )
    lengths = [5, 3]  # pieces + EOS
    per_pair = [[s[row, : lengths[row]] for s in states] for row in range(2)]
    plain = teacher_forced_aligner(model, src_ids, tgt_ids)
    reused = teacher_forced_aligner(model, src_ids, tgt_ids, encoder_states=per_pair)
    for a, b in zip(plain, reused):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # states of another source are not silently used: only the right ones change nothing
    wrong = [[torch.zeros_like(s) for s in pair] for pair in per_pair]
    assert not np.allclose(teacher_forced_aligner(model, src_ids, tgt_ids, encoder_states=wrong)[0], plain[0])
