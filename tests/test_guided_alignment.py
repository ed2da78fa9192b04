"""The guided-alignment term (Garg et al. 2019): the loss on a hand-worked case, gold links as
target rows, the supervised layer's weights and the full-context pass."""

import math

import numpy as np
import pytest
import torch

from mt.data.batching import alignment_targets, collate
from mt.training.objective import Objective, alignment_loss


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


def test_supervised_method_reads_the_trained_heads_and_their_full_context_pass(bilingual_tokenizer):
    from conftest import random_model

    from mt.alignment.align import align, default_method
    from mt.config import AlignmentConfig

    src, tgt = ["Ein Hund rennt im Park."], ["A dog runs in the park."]
    model = random_model(bilingual_tokenizer)
    model.cfg.alignment = AlignmentConfig(layer=0, heads=2)
    supervised = align(model, bilingual_tokenizer, src, tgt, method="supervised")[0]
    by_hand = align(model, bilingual_tokenizer, src, tgt, method="attention", layer=0, heads=[0, 1])[0]
    np.testing.assert_allclose(supervised.word_matrix, by_hand.word_matrix)
    assert supervised.links == by_hand.links
    model.cfg.alignment = AlignmentConfig(layer=0, heads=2, full_context=True)
    full = align(model, bilingual_tokenizer, src, tgt, method="supervised")[0]
    assert not np.allclose(full.word_matrix, by_hand.word_matrix)  # later target words seen too
    np.testing.assert_allclose(full.attention[1], by_hand.attention[1])  # other layers as before
    assert default_method({"alignment_supervised": True}) == "supervised"
    assert default_method({"alignment_supervised": False}) == default_method({}) == "attention"


@pytest.mark.integration
def test_guided_smoke_run_logs_align_loss_and_mt_align_reads_the_supervised_head(tmp_path, multi30k_mirror):
    """mt-train with links from a file (0-0: first word ↔ first word) → align_loss in metrics.jsonl
    → mt-align on the checkpoint uses --method supervised without being told."""
    import gzip
    import json
    import subprocess
    import sys
    from pathlib import Path

    from conftest import SHARED_MIRROR

    n_pairs = 200
    mirror = Path(multi30k_mirror or SHARED_MIRROR)
    with gzip.open(mirror / "train.de.gz", "rt", encoding="utf-8") as f:
        assert all(line.split() for _, line in zip(range(n_pairs), f))  # every pair has a first word
    (tmp_path / "links.txt").write_text("0-0\n" * n_pairs)
    bin_dir = Path(sys.executable).parent
    args = [
        str(bin_dir / "mt-train"), "experiment=smoke", f"data.max_train_sentences={n_pairs}",
        "data.max_valid_sentences=8", "data.max_test_sentences=8", "train.max_steps=4", "train.valid_every=2",
        "data.alignments=file", f"data.alignments_path={tmp_path / 'links.txt'}", "train.alignment_weight=0.5",
        "model.alignment.layer=0", f"hydra.run.dir={tmp_path / 'run'}", f"data.data_dir={tmp_path / 'data'}",
        *([f"data.mirror={multi30k_mirror}"] if multi30k_mirror else []),
    ]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    assert all(r["align_loss"] > 0 and r["train_loss"] > r["xent_loss"] for r in records)  # λ · align is in the total
    page = tmp_path / "view.html"
    aligned = subprocess.run(
        [str(bin_dir / "mt-align"), str(tmp_path / "run"), "Ein Hund rennt.", "A dog runs.", "--html", str(page)],
        capture_output=True, text=True, timeout=300,
    )
    assert aligned.returncode == 0, aligned.stderr[-3000:]
    assert "method supervised, layer 0" in page.read_text(encoding="utf-8")


def _reversal_batch(generator: torch.Generator, n_pairs: int = 32):
    """Source: 4–8 random words from ids 4..15; target: the same words reversed and renamed
    (id + 12). Its true alignment is known: target word j ↔ source word n-1-j."""
    src, tgt, links = [], [], []
    for _ in range(n_pairs):
        n = int(torch.randint(4, 9, (1,), generator=generator))
        words = torch.randint(4, 16, (n,), generator=generator).tolist()
        src.append(words)
        tgt.append([w + 12 for w in reversed(words)])
        links.append([(n - 1 - j, j) for j in range(n)])
    return collate(src, tgt, list(range(n_pairs)), links=links), links


def _toy_aer(model, batch, links, layer: int, heads: slice) -> float:
    """AER of the argmax link of each target word in the mean attention of some heads of a layer."""
    from mt.alignment.aer import score_alignments

    with torch.no_grad():
        memory, src_mask = model.encode(batch.src_ids)
        _, weights = model.decode_with_alignment(batch.tgt_in, memory, src_mask, layer)
    attention = weights[:, heads].mean(1)  # (batch, tgt_len, src_len), EOS included
    predicted = [{(int(attention[b, j, : len(pair)].argmax()), j) for j in range(len(pair))} for b, pair in enumerate(links)]
    gold = [set(pair) for pair in links]
    return score_alignments(predicted, gold, gold).aer


def _train_on_reversals(alignment_weight: float, updates: int = 150):
    from conftest import tiny_config
    from mt.model.transformer import Transformer

    torch.manual_seed(0)
    model = Transformer(tiny_config(), 40, 40, pad_id=0)
    objective = Objective(model, 0.0, alignment_weight=alignment_weight, alignment_layer=-1, alignment_heads=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(updates):
        batch, _ = _reversal_batch(generator)
        total, _, n_tokens = objective(batch.src_ids, batch.tgt_in, batch.tgt_out, batch.alignment)
        optimizer.zero_grad()
        (total / n_tokens).backward()
        optimizer.step()
    return model.eval()


def test_supervised_head_learns_a_known_alignment_that_unsupervised_attention_does_not():
    batch, links = _reversal_batch(torch.Generator().manual_seed(1), 64)  # unseen pairs
    guided = _train_on_reversals(1.0)
    # measured 2.8% on a 2-core AMD EPYC, 7.3% on a 2-core Intel Xeon (AMX): CPU kernels round differently
    assert _toy_aer(guided, batch, links, layer=-1, heads=slice(0, 1)) < 0.10
    unguided = _train_on_reversals(0.0)  # same seed, data and updates, no alignment term
    aers = [
        _toy_aer(unguided, batch, links, layer, heads)
        for layer in (0, 1)
        for heads in (slice(0, 1), slice(1, 2), slice(0, 2))
    ]
    assert min(aers) > 0.15  # no head or layer of it aligns this well (measured best: 26%)
