"""`primary_output`: which tensor of a model's mapping output a request is answered with."""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from spa.serve.codec import primary_output


def test_a_tensor_is_its_own_answer():
    x = torch.randn(2, 3)
    assert primary_output(x) is x


def test_logits_win_over_earlier_fields_and_else_the_first_tensor_field():
    loss, logits, hidden = torch.tensor(1.0), torch.randn(2, 3), torch.randn(2, 4, 5)
    assert primary_output(SequenceClassifierOutput(loss=loss, logits=logits)) is logits
    assert primary_output({"pooled": hidden, "logits": logits}) is logits
    assert primary_output(BaseModelOutput(last_hidden_state=hidden)) is hidden
    assert primary_output({"name": "x", "scores": logits}) is logits
