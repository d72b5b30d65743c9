"""Shared-prefix rows (pipeline/data/shared_prefix.py, pipeline/training/shared_prefix_collator.py, pipeline/sft.py): an
episode's segments packed under one prefix train exactly what the separate segment rows train (TRL's loss and
every gradient, to 1e-5), for fewer tokens; rows fit max_length; backends without a 4D mask fall back to one
row per segment."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset

from pipeline.data.segments import segment_trajectory
from pipeline.data.sft_data import SFTDataError
from pipeline.data.shared_prefix import common_prefix_length, pack_episode, pack_rows
from pipeline.sft import build_trainer, make_parser
from pipeline.training import shared_prefix_attention as tree_attention
from pipeline.training.shared_prefix_attention import NAME, TREE
from pipeline.training.shared_prefix_collator import (
    NUM_TOKENS,
    SharedPrefixCollator,
    SharedPrefixError,
    shared_prefix_fallback,
    tree_mask,
)
from tests.test_segments import collect_scripted

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes/tiny/sft.yaml"


def row(prefix: list[int], rest: list[int], untrained: int = 2) -> tuple[list[int], list[int]]:
    """A segment row: the prefix and `untrained` more tokens are context, the rest is trained."""
    ids = prefix + rest
    return ids, [0] * (len(prefix) + untrained) + [1] * (len(rest) - untrained)


# ------------------------------------------------------------------------------------------------
# Packing and masks


def test_packed_row_holds_the_prefix_once_and_each_segment_rest():
    prefix = list(range(100, 120))
    rows = [row(prefix, [1, 2, 3, 4, 5]), row(prefix, [6, 7, 8, 9]), row(prefix, [1, 2, 9, 9, 9, 9])]
    (packed,) = pack_episode("e", rows)
    assert packed.prefix_length == 20 and packed.segment_lengths == [5, 4, 6]
    assert len(packed.input_ids) == 20 + 15 < sum(len(ids) for ids, _ in rows)
    start = packed.prefix_length
    for (ids, mask), size in zip(rows, packed.segment_lengths, strict=True):
        # every segment row is exactly the prefix + its part of the packed row
        assert packed.input_ids[:20] + packed.input_ids[start : start + size] == ids
        assert packed.completion_mask[:20] + packed.completion_mask[start : start + size] == mask
        start += size
    assert sum(packed.completion_mask) == sum(sum(mask) for _, mask in rows)


def test_prefix_stops_before_the_first_trained_token():
    """Rows that agree past a trained token (a max_turns cap: one row extends the other) share only what comes
    before it: the first token of each segment's rest is never trained."""
    a = row(list(range(100, 110)), [1, 2, 3], untrained=1)
    b = (a[0] + [4, 5], a[1] + [1, 1])
    assert common_prefix_length([a[0], b[0]]) == len(a[0])
    (packed,) = pack_episode("e", [a, b])
    assert packed.prefix_length == 10
    rests = packed.completion_mask[10:]
    assert rests[0] == 0 and rests[packed.segment_lengths[0]] == 0


def test_rows_fit_max_length_and_long_rows_stay_ordinary():
    prefix = list(range(100, 140))
    rows = [row(prefix, list(range(n, n + 10))) for n in (1, 11, 21)] + [row(prefix * 3, [1, 2, 3, 4])]
    packed = pack_episode("e", rows, max_length=65)
    assert [r.segment_lengths for r in packed] == [[10, 10], [], []]
    assert all(len(r.input_ids) <= 65 for r in packed if r.segment_lengths)
    assert packed[1].input_ids == rows[2][0] and packed[1].prefix_length == len(rows[2][0])
    untrained = ([1, 2, 3], [0, 0, 0])
    assert [r.episode_id for r in pack_rows([{"input_ids": i, "completion_mask": m, "episode_id": e}
                                             for e, (i, m) in [("x", rows[0]), ("y", untrained), ("x", rows[1])]])
            ] == ["x"]  # fmt: skip


def test_mask_reads_the_prefix_and_the_own_segment_causally():
    collator = SharedPrefixCollator(pad_token_id=0, mask_format="bool")
    example = {"input_ids": [5] * 7, "labels": [-100] * 7, "prefix_length": 3, "segment_lengths": [2, 2]}
    short = {"input_ids": [5] * 4, "labels": [-100] * 4, "prefix_length": 4, "segment_lengths": []}
    batch = collator([example, short])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3, 4], [0, 1, 2, 3, 0, 0, 0]]
    allowed = batch["attention_mask"][0, 0].int().tolist()
    assert allowed[5] == [1, 1, 1, 0, 0, 1, 0]  # segment 2's first token: the prefix and itself
    assert allowed[4] == [1, 1, 1, 1, 1, 0, 0]
    padded = batch["attention_mask"][1, 0].int()
    assert padded[:4, :4].tolist() == torch.ones(4, 4).tril().int().tolist()  # an ordinary row: causal
    assert padded[5].tolist() == [0, 0, 0, 0, 0, 1, 0]  # padding reads only itself
    assert batch["labels"][1, 4:].tolist() == [-100] * 3 and batch[NUM_TOKENS].item() == 11
    assert tree_mask(torch.zeros(3, dtype=torch.long)).tolist() == torch.ones(3, 3).tril().bool().tolist()
    tree = SharedPrefixCollator(pad_token_id=0)([example, short])  # sdpa: the tree for the attention, no mask
    assert "attention_mask" not in tree and tree[TREE] == [(3, [2, 2], 7), (4, [], 4)]
    assert tree["position_ids"].tolist() == batch["position_ids"].tolist()


# ------------------------------------------------------------------------------------------------
# SFT: the quantity TRL trains is the same, through the trainer pipeline/sft.py builds


@pytest.fixture(scope="module")
def segment_rows(tiny_model_dir, tmp_path_factory) -> Path:
    """Segment rows of scripted episodes from the real environment, as curate saves them."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    trajectories = collect_scripted(tmp_path_factory.mktemp("collect"), tiny_model_dir)
    rows = [s.to_row() for t in trajectories for s in segment_trajectory(tokenizer, t)]
    assert len(rows) > len(trajectories), "episodes of several segments"
    path = tmp_path_factory.mktemp("rows") / "dataset"
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def trainer_for(model_dir: Path, data: Path, out: Path, *flags: str):
    args = ["--config", str(RECIPE), "--model_name_or_path", str(model_dir), "--dataset_path", str(data),
            "--output_dir", str(out), "--report_to", "none", "--dataloader_pin_memory", "false", *flags]  # fmt: skip
    return build_trainer(*make_parser().parse_args_and_config(args))


def one_step_gradients(trainer) -> tuple[float, dict[str, torch.Tensor], int]:
    """TRL's loss over every row of the dataset as one optimizer step (what gradient accumulation over these
    batches computes): each micro-batch's loss is its NLL sum over trained tokens divided by num_items_in_batch,
    the trained tokens of the whole step, counted the way transformers' Trainer counts them (labels[..., 1:])."""
    batches = list(trainer.get_train_dataloader())
    num_items = sum(int(b["labels"][..., 1:].ne(-100).sum()) for b in batches)
    model = trainer.model.train()
    model.zero_grad()
    total = 0.0
    for batch in batches:
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(num_items))
        loss.backward()
        total += loss.item()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return total, grads, num_items


class _Heads(torch.nn.Module):
    """What the attention function reads of a model's attention module: grouped key/value heads."""

    num_key_value_groups = 2
    is_causal = True


@pytest.mark.parametrize("merged", [True, False], ids=["log-sum-exp merge", "causal branches"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_tree_attention_equals_each_segment_row_alone(merged, dtype, monkeypatch):
    """The tree's outputs and gradients are those of causal attention over [prefix ; segment] row by row, with
    the prefix once, on both paths: the flash kernel's blocks merged by log-sum-exp, or one branch per segment."""
    if not merged:
        monkeypatch.setattr(tree_attention, "_FLASH", None)
    prefix, segments, pad, dim = 19, [7, 12, 5], 3, 16
    n = prefix + sum(segments) + pad
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, n, dim, generator=generator).to(dtype).requires_grad_()
    k, v = (torch.randn(1, 2, n, dim, generator=generator).to(dtype).requires_grad_() for _ in range(2))
    out, _ = tree_attention.shared_prefix_attention(_Heads(), q, k, v, None, **{TREE: [(prefix, segments, n - pad)]})
    weights = torch.randn(out.shape, generator=generator).to(dtype)
    (out.float() * weights.float()).sum().backward()
    grads = [t.grad.float() for t in (q, k, v)]

    expected, start = [], prefix
    qr, kr, vr = (t.detach().float().requires_grad_() for t in (q, k, v))
    for i, size in enumerate(segments):
        index = torch.cat([torch.arange(prefix), torch.arange(start, start + size)])
        keys, values = (t[:, :, index].repeat_interleave(2, dim=1) for t in (kr, vr))
        row = torch.nn.functional.scaled_dot_product_attention(qr[:, :, index], keys, values, is_causal=True)
        expected.append(row.transpose(1, 2)[:, : (prefix if i == 0 else 0)])
        expected.append(row.transpose(1, 2)[:, prefix:])
        start += size
    reference = torch.cat([*expected, torch.zeros(1, pad, 4, dim)], dim=1)
    (reference * weights.float()).sum().backward()
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2
    assert torch.allclose(out.float(), reference, atol=tolerance, rtol=0)
    for got, want in zip(grads, (qr.grad, kr.grad, vr.grad), strict=True):
        assert torch.allclose(got, want, atol=tolerance, rtol=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_rows_train_what_segment_rows_train(attention, tiny_model_dir, segment_rows, tmp_path):
    """sdpa: the tree attention (training/shared_prefix_attention.py, no mask); eager: the dense additive 4D mask."""
    flags = ["--attn_implementation", attention]
    segments, segments_report = trainer_for(tiny_model_dir, segment_rows, tmp_path / "a", *flags)
    packed, packed_report = trainer_for(tiny_model_dir, segment_rows, tmp_path / "b", "--shared_prefix", "true", *flags)
    assert packed.model.config._attn_implementation == {"sdpa": NAME, "eager": "eager"}[attention]
    figures = packed_report["shared_prefix"]
    assert figures["segment_rows"] == segments_report["rows"] and figures["rows"] < figures["segment_rows"]
    assert figures["segment_tokens"] == segments_report["tokens"]
    assert figures["tokens"] < 0.9 * figures["segment_tokens"]
    assert packed_report["trained_tokens"] == segments_report["trained_tokens"]
    assert isinstance(packed.data_collator, SharedPrefixCollator)

    loss_a, grads_a, items_a = one_step_gradients(segments)
    loss_b, grads_b, items_b = one_step_gradients(packed)
    assert items_a == items_b == segments_report["trained_tokens"]
    assert abs(loss_a - loss_b) < 1e-5
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 0
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=0), name


def test_shared_prefix_trains_and_counts_real_tokens(tiny_model_dir, segment_rows, tmp_path):
    flags = ["--shared_prefix", "true", "--max_steps", "2", "--save_strategy", "no"]
    flags += ["--gradient_accumulation_steps", "1"]
    trainer, _ = trainer_for(tiny_model_dir, segment_rows, tmp_path / "run", *flags)
    batch = next(iter(trainer.get_train_dataloader()))
    assert TREE in batch and "position_ids" in batch
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    tokens = [e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e]
    assert tokens and tokens[-1] <= 2 * max(len(r) for r in trainer.train_dataset["input_ids"])


def test_attention_without_a_tree_falls_back_to_segment_rows(tiny_model_dir, segment_rows, tmp_path):
    # flex attention (like flash) takes no 4D mask here: SFT still trains, one row per segment, and says why
    trainer, report = trainer_for(tiny_model_dir, segment_rows, tmp_path / "x", "--shared_prefix", "true",
                                  "--attn_implementation", "flex_attention")  # fmt: skip
    assert "flex_attention" in report["shared_prefix"]["fallback"]
    assert len(trainer.train_dataset) == len(Dataset.load_from_disk(str(segment_rows)))
    assert "prefix_length" not in trainer.train_dataset.column_names
    assert shared_prefix_fallback("flash_attention_2") and shared_prefix_fallback("sdpa") is None


def test_data_that_cannot_take_shared_prefix_rows_is_refused(tiny_model_dir, segment_rows, tmp_path):
    with pytest.raises(SharedPrefixError, match="packing"):
        trainer_for(tiny_model_dir, segment_rows, tmp_path / "y", "--shared_prefix", "true", "--packing", "true")
    bare = tmp_path / "bare"
    Dataset.from_list([{"input_ids": [1, 2, 3], "completion_mask": [0, 1, 1]}]).save_to_disk(str(bare))
    with pytest.raises(SFTDataError, match="episode_id"):
        trainer_for(tiny_model_dir, bare, tmp_path / "z", "--shared_prefix", "true")


def test_tree_attention_takes_mixed_dtypes_under_bf16_autocast():
    """Under CPU bf16 autocast (the demo's SFT) q and k can arrive in float32 and v in bf16, as sdpa accepts."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(1, 4, 40, 16, generator=generator).requires_grad_()
    k = torch.randn(1, 2, 40, 16, generator=generator).requires_grad_()
    v = torch.randn(1, 2, 40, 16, generator=generator).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = tree_attention.shared_prefix_attention(_Heads(), q, k, v, None, **{TREE: [(20, [10, 10], 40)]})
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and q.grad.dtype == torch.float32 and v.grad.dtype == torch.bfloat16
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()


def test_a_batch_of_rows_attends_as_each_row_alone():
    """Two rows in one batch (a tree, and an ordinary row with padding) give what each gives alone, gradients
    included: the batch path slices and concatenates rows, the batch of one does not."""
    generator = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 30, 16, generator=generator).requires_grad_()
    k, v = (torch.randn(2, 2, 30, 16, generator=generator).requires_grad_() for _ in range(2))
    rows = [(12, [10, 8], 30), (0, [], 22)]
    out, _ = tree_attention.shared_prefix_attention(_Heads(), q, k, v, None, **{TREE: rows})
    out.sum().backward()
    for b, row in enumerate(rows):
        qb, kb, vb = (t.detach()[b : b + 1].clone().requires_grad_() for t in (q, k, v))
        alone, _ = tree_attention.shared_prefix_attention(_Heads(), qb, kb, vb, None, **{TREE: [row]})
        alone.sum().backward()
        assert torch.allclose(out[b : b + 1], alone, atol=1e-6)
        assert (out[b, row[2] :] == 0).all()
        for got, want in zip((q, k, v), (qb, kb, vb), strict=True):
            assert torch.allclose(got.grad[b : b + 1], want.grad, atol=1e-6)
