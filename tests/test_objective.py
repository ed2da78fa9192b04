"""The chunked vocabulary projection + label-smoothed cross-entropy
(``mt.training.objective.linear_cross_entropy``) against PyTorch's own ``F.linear`` + ``F.cross_entropy``."""

import pytest
import torch
import torch.nn.functional as F

from mt.training.objective import linear_cross_entropy

TOKENS, D_MODEL, VOCAB = 300, 16, 50


def inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(TOKENS, D_MODEL, generator=g).requires_grad_()
    weight = torch.randn(VOCAB, D_MODEL, generator=g).requires_grad_()
    target = torch.randint(0, VOCAB, (TOKENS,), generator=g)
    return hidden, weight, target


def reference(hidden, weight, target, label_smoothing):
    return F.cross_entropy(F.linear(hidden, weight).float(), target, label_smoothing=label_smoothing, reduction="sum")


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("rows", [7, 1, TOKENS, 1000])  # chunks that do not divide the tokens, one row, one chunk
def test_loss_and_gradients_equal_pytorchs_cross_entropy(label_smoothing, rows):
    hidden, weight, target = inputs()
    expected = reference(hidden, weight, target, label_smoothing)
    expected_grads = torch.autograd.grad(expected * 0.37, [hidden, weight])  # a scaled loss, as train_step backpropagates
    loss = linear_cross_entropy(hidden, weight, target, label_smoothing, chunk_elements=rows * VOCAB)
    grads = torch.autograd.grad(loss * 0.37, [hidden, weight])
    torch.testing.assert_close(loss, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


def test_bf16_autocast_projects_in_bf16_like_f_linear():
    hidden, weight, target = inputs(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference(hidden, weight, target, 0.1)
        loss = linear_cross_entropy(hidden, weight, target, 0.1, chunk_elements=7 * VOCAB)
    expected_grads = torch.autograd.grad(expected, [hidden, weight])
    grads = torch.autograd.grad(loss, [hidden, weight])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=0)  # the same bf16 logits, summed in another order
    for got, want in zip(grads, expected_grads):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02 * float(want.abs().max()))  # bf16 rounding


def test_no_tokens_by_vocabulary_tensor_is_kept_for_backward():
    hidden, weight, target = inputs()
    saved = []

    def keep_shape(tensor):
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep_shape, lambda tensor: tensor):
        linear_cross_entropy(hidden, weight, target, 0.1, chunk_elements=7 * VOCAB)
        ours = list(saved)
        saved.clear()
        reference(hidden, weight, target, 0.1)
    assert (TOKENS, VOCAB) in saved  # the plain path keeps the log-softmax: the hook sees it
    assert ours and (TOKENS, VOCAB) not in ours and max(a * b for a, b in ours) <= TOKENS * D_MODEL


def test_without_gradients_it_builds_no_graph_and_gives_the_same_loss():
    hidden, weight, target = inputs()
    expected = reference(hidden, weight, target, 0.1)
    with torch.inference_mode():
        loss = linear_cross_entropy(hidden, weight, target, 0.1, chunk_elements=7 * VOCAB)
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, expected.detach())


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_logits_far_below_the_row_maximum_still_give_pytorchs_loss_and_gradients(label_smoothing):
    # logits spread over hundreds of nats: exp(z − max) underflows float32 for most of them, and
    # the loss shifts and exponentiates in place (mt.training.objective._chunked_loss)
    hidden, weight, target = inputs(2)
    with torch.no_grad():
        hidden *= 25.0
    logits = F.linear(hidden, weight).detach()
    spread = logits.max(1).values - logits.min(1).values
    assert float(spread.min()) > 200  # every row has logits beyond exp's float32 range
    expected = reference(hidden.double(), weight.double(), target, label_smoothing)
    expected_grads = torch.autograd.grad(expected, [hidden, weight])
    loss = linear_cross_entropy(hidden, weight, target, label_smoothing, chunk_elements=7 * VOCAB)
    grads = torch.autograd.grad(loss, [hidden, weight])
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
