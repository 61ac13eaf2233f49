"""Criteria on models returning a `ModelOutput`, taking dict inputs, or predicting per token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_outputs import TokenClassifierOutput

import spa
from spa.errors import ConfigError
from spa.pruning import CRITERIA, channel_groups, lrp, score


class _Tagger(nn.Module):
    """Per-token classifier on float features, returning a `ModelOutput` (keyword input)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(6, 8, bias=False)
        self.classifier = nn.Linear(8, 3, bias=False)

    def forward(self, features: torch.Tensor) -> TokenClassifierOutput:
        return TokenClassifierOutput(logits=self.classifier(torch.relu(self.hidden(features))))


class _Plain(nn.Module):
    """The same network on a positional tensor, returning the logits tensor."""

    def __init__(self, tagger: _Tagger) -> None:
        super().__init__()
        self.tagger = tagger

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.tagger(features=features).logits


@pytest.fixture
def tagger():
    model = spa.adapt(_Tagger(), spa.SPLoRAConfig(rank=2))
    nn.init.normal_(model.hidden.up)
    return model


def _data():
    features = torch.randn(2, 5, 6)
    labels = torch.randint(0, 3, (2, 5))
    labels[0, 4] = labels[1, 0] = -100  # padding
    return features, labels


def _hand_loss(logits, labels):
    return F.cross_entropy(logits.reshape(-1, 3), labels.reshape(-1), ignore_index=-100)


@pytest.mark.parametrize("criterion", CRITERIA.names())
def test_dict_inputs_model_output_and_per_token_targets(tagger, criterion):
    """Defaults (logits, flattened cross-entropy) == a plain model with a hand-written loss."""
    features, labels = _data()
    layers = {"hidden": tagger.hidden}
    default = CRITERIA.get(criterion)(
        tagger, layers, data=[{"features": features, "labels": labels}]
    )
    expected = CRITERIA.get(criterion)(
        _Plain(tagger),
        {"tagger.hidden": tagger.hidden},
        data=[(features, labels)],
        loss_fn=_hand_loss,
    )
    torch.testing.assert_close(default["hidden"], expected["tagger.hidden"])
    assert default["hidden"].abs().sum() > 0


def test_lrp_per_token_conserves_relevance(tagger):
    """Bias-free ReLU network, z-rule: input relevance sums to the explained token logits."""
    features, labels = _data()
    result = lrp(tagger, {"features": features}, labels, epsilon=0.0)
    assert result.output.shape == ((labels != -100).sum(),)
    logits = tagger(features=features).logits
    torch.testing.assert_close(
        result.output, logits[labels != -100].gather(1, labels[labels != -100, None]).flatten()
    )
    torch.testing.assert_close(
        result.input["features"].sum(), result.output.sum(), rtol=1e-4, atol=1e-5
    )


def test_a_custom_output_fn_selects_the_prediction(tagger):
    class _TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tagger = tagger

        def forward(self, features):
            logits = self.tagger(features=features).logits
            return {"start": logits.sum(dim=-1), "end": logits}

    features, labels = _data()
    model = _TwoHeads()
    stats = CRITERIA.get("gradient")(
        model, {"hidden": tagger.hidden}, data=[(features, labels)], output_fn=lambda o: o["end"]
    )
    expected = CRITERIA.get("gradient")(
        _Plain(tagger), {"hidden": tagger.hidden}, data=[(features, labels)], loss_fn=_hand_loss
    )
    torch.testing.assert_close(stats["hidden"], expected["hidden"])


def test_an_output_without_a_prediction_is_refused(tagger):
    class _Strange(nn.Module):
        def forward(self, features):
            return {"scores": tagger(features=features).logits}

    features, labels = _data()
    with pytest.raises(ConfigError, match="dict.*output_fn"):
        CRITERIA.get("gradient")(_Strange(), {"hidden": tagger.hidden}, data=[(features, labels)])


def test_score_passes_output_fn_through(tagger):
    """`score` on a transformers-style model with dict batches and a custom output_fn."""
    features, labels = _data()
    groups = channel_groups(tagger, {"features": features})
    data = [{"features": features, "labels": labels}]
    by_default = score(tagger, "taylor", groups, data=data)
    explicit = score(tagger, "taylor", groups, data=data, output_fn=lambda o: o.logits)
    assert by_default.keys() == explicit.keys()
    for index in by_default:
        torch.testing.assert_close(by_default[index], explicit[index])
