"""One update (``mt.training.step.train_step``) against a gradient step computed by hand, the non-finite
skip, how an epoch is cut into updates, and the training state's round trip."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from mt.config import TrainConfig
from mt.data.batching import collate
from mt.training.schedule import budget_progress, build_optimizer
from mt.training.state import TrainState, early_stop
from mt.training.step import Optimization, build_optimization, epoch_updates, train_step


def two_batches() -> list:
    """Two batches of different shapes and padding (ids 3… are ordinary pieces)."""
    first = collate([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14, 15]], [0, 1])
    second = collate([[16, 17, 18, 19, 20]], [[21, 22, 23]], [2])
    return [first, second]


def sgd(model: torch.nn.Module, objective: torch.nn.Module, lr: float, clip_norm: float) -> Optimization:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return Optimization(
        model=model,
        objective=objective,
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        device=torch.device("cpu"),
        precision="fp32",
        clip_norm=clip_norm,
    )


def hand_step(model: torch.nn.Module, batches: list, lr: float, clip_norm: float) -> dict[str, torch.Tensor]:
    """w - lr · g, g = ∇ (Σ over both batches' real target tokens of the cross-entropy) / tokens,
    scaled down to norm ``clip_norm`` when longer; written from the model's forward, not the objective."""
    reference = copy.deepcopy(model)
    total, tokens = 0.0, 0
    for batch in batches:
        memory, src_mask = reference.encode(batch.src_ids)
        hidden, _ = reference.decode(batch.tgt_in, memory, src_mask)
        logits = reference.logits(hidden)  # (batch, tgt_len, vocab), padding included
        real = batch.tgt_out != reference.pad_id
        total = total + F.cross_entropy(logits[real], batch.tgt_out[real], reduction="sum")
        tokens += int(real.sum())
    (total / tokens).backward()
    grads = {name: p.grad for name, p in reference.named_parameters()}
    norm = math.sqrt(sum(float((g**2).sum()) for g in grads.values()))
    scale = min(1.0, clip_norm / norm)
    return {name: p.detach() - lr * scale * grads[name] for name, p in reference.named_parameters()}


@pytest.mark.parametrize("clip_norm", [100.0, 0.05])  # not clipped, clipped
def test_two_accumulated_batches_make_the_hand_computed_sgd_step(tiny_model, clip_norm):
    from mt.training.objective import Objective

    model = tiny_model.train()
    batches = two_batches()
    expected = hand_step(model, batches, lr=0.5, clip_norm=clip_norm)
    tokens = sum(int((b.tgt_out != model.pad_id).sum()) for b in batches)
    result = train_step(sgd(model, Objective(model, 0.0), lr=0.5, clip_norm=clip_norm), batches, tokens)
    assert result.finite
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert result.terms.keys() == {"xent"} and result.loss == pytest.approx(result.terms["xent"])


def test_train_step_sums_the_loss_of_its_batches(tiny_model):
    from mt.training.objective import sequence_loss

    batches = two_batches()
    with torch.no_grad():
        expected = sum(float(sequence_loss(tiny_model, b, 0.1)[0]) for b in batches)
    opt = build_optimization(tiny_model.train(), TrainConfig(label_smoothing=0.1), torch.device("cpu"), "fp32")
    result = train_step(opt, batches, update_tokens=12)
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert opt.scheduler.last_epoch == 1  # the schedule moved on with the update


def test_a_nonfinite_gradient_skips_the_update(tiny_model):
    from mt.training.objective import Objective

    class NanObjective(Objective):
        def forward(self, *batch):
            total, terms, n = super().forward(*batch)
            return total * float("nan"), terms, n

    model = tiny_model.train()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    opt = sgd(model, NanObjective(model, 0.0), lr=0.5, clip_norm=1.0)
    result = train_step(opt, two_batches(), update_tokens=12)
    assert not result.finite and opt.scheduler.last_epoch == 0
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


@pytest.mark.parametrize("n_pairs", [37, 61])
def test_every_update_has_a_full_group_of_batches(n_pairs):
    """1 process × accum 2 and 2 processes × accum 1 (group of 2) cut the epoch alike: the same
    updates, a short last group dropped in both, the batches' union covering the rest."""
    torch.manual_seed(0)
    lens = torch.randint(1, 30, (n_pairs,)).tolist()
    cfg = TrainConfig(batch_tokens=64, seed=3)
    from mt.data import batching

    batches = batching.token_batches(lens, lens, cfg.batch_tokens, True, cfg.seed + 1)
    for group_size in (2, 3):
        updates = epoch_updates(lens, lens, cfg, epoch=1, group_size=group_size)
        assert all(len(group) == group_size for group in updates)
        assert len(updates) == len(batches) // group_size
        assert [b for group in updates for b in group] == batches[: len(updates) * group_size]
    assert epoch_updates(lens, lens, cfg, epoch=1, group_size=1) == [[b] for b in batches]


def test_training_state_round_trips_through_a_checkpoint_dict():
    state = TrainState(step=7, epoch=2, batches_done=5, best_bleu=12.5, bad_validations=1, nonfinite_steps=3)
    saved = state.state_dict()
    assert saved["step"] == 7 and saved["best_bleu"] == 12.5 and "rng" in saved
    expected_draw = torch.rand(3)  # the draw that follows the saved RNG state
    restored = TrainState()
    restored.load_state_dict(saved)
    assert torch.equal(torch.rand(3), expected_draw)
    assert (restored.step, restored.epoch, restored.batches_done, restored.best_bleu) == (7, 2, 5, 12.5)
    assert restored.elapsed() >= saved["elapsed_s"]


def test_early_stopping_counts_validations_without_a_better_score():
    state = TrainState()
    assert state.record_score(10.0) and state.bad_validations == 0
    assert not state.record_score(9.0) and not state.record_score(10.0)  # equal is not better
    assert state.bad_validations == 2 and early_stop(state, patience=2) and not early_stop(state, patience=3)
    assert not early_stop(state, patience=0)  # 0 = never
    assert state.record_score(11.0) and state.bad_validations == 0 and state.best_bleu == 11.0


def _annealed_lrs(cfg: TrainConfig, elapsed_s_per_update: float = 0.0, n_updates: int | None = None) -> list[float]:
    """The learning rate of updates 1, 2, … under ``cfg``'s schedule, the trainer's way (step the
    scheduler after each update, then report the budget used; no epoch limit), and last the rate
    after the last update."""
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(2, 2))], cfg)
    lrs = []
    for step in range(1, (n_updates or cfg.max_steps) + 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        scheduler.set_progress(budget_progress(cfg, step, step * elapsed_s_per_update, 0.0))
    return lrs + [optimizer.param_groups[0]["lr"]]


@pytest.mark.parametrize("shape", ["cosine", "linear"])
def test_annealed_schedule_matches_the_formula_over_a_step_budget(shape):
    """Linear warm-up to the peak at update ``warmup``, then from the peak at update warmup+1 to
    min_lr after the last update, written out per update."""
    peak, low, warmup, n = 1e-3, 1e-5, 4, 20
    cfg = TrainConfig(lr=peak, min_lr=low, warmup_steps=warmup, lr_schedule=shape, max_steps=n, max_minutes=0)
    expected = []
    for update in range(1, n + 1):
        if update <= warmup:
            expected.append(low + (peak - low) * update / warmup)
        else:
            done = (update - 1 - warmup) / (n - warmup)
            decay = 0.5 * (1 + math.cos(math.pi * done)) if shape == "cosine" else 1 - done
            expected.append(low + (peak - low) * decay)
    assert _annealed_lrs(cfg) == pytest.approx(expected + [low], rel=1e-9)
    assert max(expected) == pytest.approx(peak)


def test_a_time_budget_anneals_by_the_clock_not_the_step_count():
    """Two hosts, one twice as fast: both reach min_lr at the time limit, the slow one in half
    the updates, and each is halfway down (linear) at half its decay time."""
    cfg = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, lr_schedule="linear", max_steps=0, max_minutes=1.0)
    fast = _annealed_lrs(cfg, elapsed_s_per_update=0.5, n_updates=120)  # 120 updates in 60 s
    slow = _annealed_lrs(cfg, elapsed_s_per_update=1.0, n_updates=60)
    assert fast[60] == pytest.approx(slow[30]) == pytest.approx(5e-4)  # after 30 s
    assert fast[-1] == slow[-1] == 0.0  # after the minute
    assert fast[-2] == pytest.approx(1e-3 * 0.5 / 60) and slow[-2] == pytest.approx(1e-3 / 60)  # the update that ends it
    assert budget_progress(cfg, 120, 60.0, 0.0) == 1.0


def test_budget_progress_is_the_limit_used_up_most():
    cfg = TrainConfig(max_steps=100, max_minutes=10.0, max_epochs=4)
    assert budget_progress(cfg, 50, 60.0, 1.0) == 0.5  # steps lead: 0.5 > 0.1 and 0.25
    assert budget_progress(cfg, 10, 540.0, 1.0) == 0.9  # the clock leads
    assert budget_progress(TrainConfig(max_steps=0, max_minutes=0, max_epochs=0), 10, 5.0, 1.0) == 0.0


def test_annealed_schedule_resumes_from_its_state_dict():
    """A scheduler rebuilt from another's state_dict mid-decay continues with the same rates."""
    cfg = TrainConfig(lr=1e-3, warmup_steps=3, lr_schedule="cosine", max_steps=12, max_minutes=0)
    whole = _annealed_lrs(cfg)
    optimizer, scheduler = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    for step in range(1, 7):
        optimizer.step()
        scheduler.step()
        scheduler.set_progress(budget_progress(cfg, step, 0.0, 0.0))
    state = copy.deepcopy(scheduler.state_dict())
    optimizer2, resumed = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    optimizer2.load_state_dict(optimizer.state_dict())
    resumed.load_state_dict(state)
    lrs = []
    for step in range(7, 13):
        lrs.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        resumed.step()
        resumed.set_progress(budget_progress(cfg, step, 0.0, 0.0))
    assert lrs == pytest.approx(whole[6:-1], rel=1e-12)
