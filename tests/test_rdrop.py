"""R-Drop (Liang et al. 2021): the chunked loss against the paper's equation written with
PyTorch's own ``F.cross_entropy`` and ``F.kl_div``, and the objective's two dropout passes."""

import pytest
import torch
import torch.nn.functional as F

from conftest import VOCAB, tiny_config
from mt.data.batching import collate
from mt.config import TrainConfig
from mt.model.transformer import Transformer
from mt.training.objective import Objective, linear_cross_entropy, linear_rdrop_loss
from mt.training.train import build_optimization, train_step

TOKENS, D_MODEL, V = 300, 16, 50


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden_a = torch.randn(TOKENS, D_MODEL, generator=g).requires_grad_()
    hidden_b = torch.randn(TOKENS, D_MODEL, generator=g).requires_grad_()
    weight = torch.randn(V, D_MODEL, generator=g).requires_grad_()
    target = torch.randint(0, V, (TOKENS,), generator=g)
    return hidden_a, hidden_b, weight, target


def paper_loss(hidden_a, hidden_b, weight, target, label_smoothing, alpha):
    """Eq. 3 of the paper, halved: ½·(CE1 + CE2) + ½·α·½·(KL(P1‖P2) + KL(P2‖P1))."""
    log_a = F.linear(hidden_a, weight).log_softmax(-1)
    log_b = F.linear(hidden_b, weight).log_softmax(-1)
    xent = 0.5 * sum(F.cross_entropy(z, target, label_smoothing=label_smoothing, reduction="sum") for z in (log_a, log_b))
    kl_ab = F.kl_div(log_b, log_a, log_target=True, reduction="sum")  # KL(P1‖P2)
    kl_ba = F.kl_div(log_a, log_b, log_target=True, reduction="sum")
    kl = 0.5 * (kl_ab + kl_ba)
    return xent + 0.5 * alpha * kl, xent, kl


@pytest.mark.parametrize("label_smoothing, alpha", [(0.0, 5.0), (0.1, 5.0), (0.1, 0.7)])
@pytest.mark.parametrize("rows", [7, 1, TOKENS])  # chunks that do not divide the tokens, one row, one chunk
def test_loss_and_gradients_equal_the_papers_equation(label_smoothing, alpha, rows):
    hidden_a, hidden_b, weight, target = inputs()
    expected = paper_loss(hidden_a, hidden_b, weight, target, label_smoothing, alpha)
    expected_grads = torch.autograd.grad(expected[0] * 0.37, [hidden_a, hidden_b, weight])  # scaled, as train_step does
    got = linear_rdrop_loss(hidden_a, hidden_b, weight, target, label_smoothing, alpha, chunk_elements=rows * V)
    grads = torch.autograd.grad(got[0] * 0.37, [hidden_a, hidden_b, weight])
    for value, want in zip(got, expected):
        torch.testing.assert_close(value, want.detach())
    assert float(got[2]) > 0
    assert not got[1].requires_grad and not got[2].requires_grad
    for value, want in zip(grads, expected_grads):
        torch.testing.assert_close(value, want)


def test_two_equal_passes_have_no_kl_and_the_plain_cross_entropy():
    hidden, _, weight, target = inputs(1)
    total, xent, kl = linear_rdrop_loss(hidden, hidden, weight, target, 0.1, 5.0, chunk_elements=7 * V)
    plain = linear_cross_entropy(hidden, weight, target, 0.1)
    torch.testing.assert_close(total, plain)
    torch.testing.assert_close(xent, plain.detach())
    assert abs(float(kl)) < 1e-4
    torch.testing.assert_close(torch.autograd.grad(total, weight)[0], torch.autograd.grad(plain, weight)[0])


def batch():
    """Two sentence pairs of different lengths (ids 3… are ordinary pieces), so that both sides pad."""
    return collate([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]], [0, 1])


def model(dropout: float) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(dropout=dropout), VOCAB, VOCAB, pad_id=0)


def test_in_eval_mode_or_without_dropout_it_is_the_plain_objective():
    b = batch()
    for m in (model(0.3).eval(), model(0.0).train()):
        plain_total, plain_terms, n = Objective(m, 0.1)(b.src_ids, b.tgt_in, b.tgt_out)
        total, terms, n_rdrop = Objective(m, 0.1, rdrop_alpha=5.0)(b.src_ids, b.tgt_in, b.tgt_out)
        assert n_rdrop == n == 8  # the target tokens of one copy, EOS included
        torch.testing.assert_close(total, plain_total)
        torch.testing.assert_close(terms["xent"], plain_terms["xent"])
        if m.training:  # two passes without dropout: the same distributions
            assert abs(float(terms["rdrop"])) < 1e-5
        else:  # validation runs one pass, with no R-Drop term
            assert set(terms) == {"xent"}


def test_with_dropout_the_two_copies_draw_different_masks():
    b = batch()
    m = model(0.3).train()
    total, terms, _ = Objective(m, 0.1, rdrop_alpha=5.0)(b.src_ids, b.tgt_in, b.tgt_out)
    assert float(terms["rdrop"]) > 0.01
    torch.testing.assert_close(total, terms["xent"] + 2.5 * terms["rdrop"])


def test_train_step_applies_an_rdrop_update_and_logs_its_term():
    m = model(0.3).train()
    opt = build_optimization(m, TrainConfig(rdrop_alpha=5.0, warmup_steps=0), torch.device("cpu"), "fp32")
    before = [p.detach().clone() for p in m.parameters()]
    result = train_step(opt, [batch()], update_tokens=8)
    assert result.finite and set(result.terms) == {"xent", "rdrop"} and result.terms["rdrop"] > 0
    assert result.loss == pytest.approx(result.terms["xent"] + 2.5 * result.terms["rdrop"], rel=1e-5)
    assert any(not torch.equal(p, q) for p, q in zip(m.parameters(), before))
