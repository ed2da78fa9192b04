"""The guided-alignment term (Garg et al. 2019): the loss on a hand-worked case, gold links as
target rows, the supervised layer's weights and the full-context pass."""

import math

import pytest
import torch

from mt.batching import alignment_targets, collate
from mt.objective import Objective, alignment_loss


def test_alignment_loss_on_a_hand_worked_case():
    # target piece 0 is linked to source pieces 0 and 2, target piece 1 to nothing
    attention = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]]])
    gold = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]])
    expected = -(0.5 * math.log(0.5) + 0.5 * math.log(0.25))  # 1.0397…: the unlinked row adds nothing
    assert float(alignment_loss(attention, gold)) == pytest.approx(expected, rel=1e-6)


def test_links_become_rows_that_sum_to_one_per_linked_target_piece():
    gold = alignment_targets([[(0, 0), (2, 0), (1, 1)], []], tgt_len=3, src_len=4)
    expected = torch.zeros(2, 3, 4)
    expected[0, 0, 0] = expected[0, 0, 2] = 0.5
    expected[0, 1, 1] = 1.0
    assert torch.equal(gold, expected)
    batch = collate([[5, 6, 7], [8]], [[9, 10], [11]], [0, 1], links=[[(0, 0), (2, 0), (1, 1)], []])
    assert torch.equal(batch.alignment, expected)  # (batch, tgt_len = 2 + EOS, src_len = 3 + EOS)


def test_guided_objective_adds_the_weighted_term_of_the_supervised_heads(tiny_model):
    batch = collate([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], [0, 1], links=[[(0, 0), (2, 1)], [(1, 2)]])
    plain = Objective(tiny_model, 0.0)
    guided = Objective(tiny_model, 0.0, alignment_weight=0.3, alignment_layer=-1, alignment_heads=2)
    with torch.no_grad():
        _, plain_terms, n = plain(batch.src_ids, batch.tgt_in, batch.tgt_out)
        total, terms, n_guided = guided(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
        memory, src_mask = tiny_model.encode(batch.src_ids)
        _, weights = tiny_model.decode(batch.tgt_in, memory, src_mask, need_weights=True)
    attention = weights[-1][:, :2].mean(1)  # last layer, first two heads
    expected = -sum(math.log(float(attention[b, t, s])) * g for (b, t, s), g in
                    [((0, 0, 0), 1.0), ((0, 1, 2), 1.0), ((1, 2, 1), 1.0)])  # fmt: skip
    assert n == n_guided and float(terms["xent"]) == pytest.approx(float(plain_terms["xent"]), rel=1e-6)
    assert float(terms["align"]) == pytest.approx(expected, rel=1e-5)
    assert float(total) == pytest.approx(float(terms["xent"]) + 0.3 * expected, rel=1e-5)
    _, unguided_terms, _ = guided(batch.src_ids, batch.tgt_in, batch.tgt_out)  # no links: no term
    assert unguided_terms.keys() == {"xent"}


def test_decode_with_alignment_is_decode_plus_one_layers_weights(tiny_model):
    batch = collate([[5, 6, 7, 8]], [[10, 11, 12]], [0])
    with torch.no_grad():
        memory, src_mask = tiny_model.encode(batch.src_ids)
        hidden, weights = tiny_model.decode(batch.tgt_in, memory, src_mask, need_weights=True)
        for layer in (0, 1, -1):
            aligned_hidden, layer_weights = tiny_model.decode_with_alignment(batch.tgt_in, memory, src_mask, layer)
            torch.testing.assert_close(aligned_hidden, hidden)
            torch.testing.assert_close(layer_weights, weights[layer])
        full_hidden, full = tiny_model.decode_with_alignment(batch.tgt_in, memory, src_mask, 1, full_context=True)
    torch.testing.assert_close(full_hidden, hidden)  # the decoding itself stays causal
    # the last position sees the whole target either way; earlier ones now see later pieces too
    torch.testing.assert_close(full[:, :, -1], weights[1][:, :, -1])
    assert not torch.allclose(full[:, :, 0], weights[1][:, :, 0])
    with pytest.raises(IndexError):
        tiny_model.decode_with_alignment(batch.tgt_in, memory, src_mask, 2)  # a 2-layer decoder
