"""The LM head scored at trained positions only (pipeline/training/lm_head.py): same loss and gradients as TRL's
every-position path on the CPU, and it really scores fewer rows."""

from __future__ import annotations

import torch
import trl.trainer.utils as trl_utils
from transformers import AutoModelForCausalLM
from trl.trainer.utils import add_fused_lm_head

from pipeline.training.lm_head import score_trained_positions_only


class _RowCounter:
    """Wraps TRL's chunked log-prob function to count the hidden rows its kernel is given."""

    def __init__(self, real):
        self.real, self.rows = real, []

    def apply(self, hidden, *args):
        self.rows.append(hidden.shape[0])
        return self.real.apply(hidden, *args)


def _loss_and_grads(model, input_ids, labels):
    model.zero_grad()
    out = model(input_ids=input_ids, labels=labels, fused_lm_head=True)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_trained_positions_only_gives_the_same_loss_and_gradients(tiny_model_dir, monkeypatch):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 96))
    labels = torch.full_like(input_ids, -100)
    labels[0, 40:52] = input_ids[0, 40:52]  # two trained spans, as assistant turns in a segment row
    labels[1, 70:96] = input_ids[1, 70:96]
    counter = _RowCounter(trl_utils._ChunkedLogProbFunction)
    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", counter)
    try:
        score_trained_positions_only(False)
        stock_loss, stock_grads = _loss_and_grads(model, input_ids, labels)
        score_trained_positions_only(True)
        loss, grads = _loss_and_grads(model, input_ids, labels)
    finally:
        score_trained_positions_only(True)
    # TRL's path scored every shifted position; ours only the labelled ones (12 + 26 next-token labels, less the
    # one a shift drops at each row's start: none here)
    assert counter.rows == [2 * 95, 12 + 26]
    torch.testing.assert_close(loss, stock_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == stock_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, stock_grads[name], rtol=1e-5, atol=1e-6, msg=name)
