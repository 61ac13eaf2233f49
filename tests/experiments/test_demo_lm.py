"""`spa demo lm` in its quick mode: it learns, and its bundles rebuild what it recorded."""

from __future__ import annotations

import math

import pytest
import torch

from spa.experiments.demo_lm import QUICK, run_lm_demo


def _held_out_blocks() -> torch.Tensor:
    """The demo's held-out bytes, cut here: the last 10% of the corpus from a line start."""
    from pydoc_data.topics import topics

    text = "\n\n".join(topics[name] for name in sorted(topics))
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    ids = list(text[cut:].encode("utf-8"))[: QUICK.eval_blocks * QUICK.sequence_length]
    return torch.tensor(ids).view(QUICK.eval_blocks, QUICK.sequence_length)


def _perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(input_ids=ids).logits.double()
    picked = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None])
    return math.exp(-float(picked.mean()))


@pytest.mark.slow
def test_lm_demo_quick_learns_and_its_bundles_reproduce_the_recorded_perplexity(tmp_path):
    from spa.models.loading import load_model
    from spa.tasks import load_task

    result = run_lm_demo(tmp_path, quick=True)
    # Bytes: an untrained model is near the uniform 256; even the quick source model learns.
    assert result.untrained_perplexity > 100
    assert result.source_perplexity < 0.25 * result.untrained_perplexity
    assert [run.records[0]["method"] for run in result.runs] == ["SPLoRA r8", "Fine-pruning"]
    options = {**QUICK.model, "vocab_size": 256}
    base = load_model(result.source, name="tiny_llama", options=options).model.eval()
    ids = _held_out_blocks()
    for run in result.runs:
        assert [r["target_density"] for r in run.records] == [1.0, *QUICK.densities]
        for record in run.records:
            assert record["metric_name"] == "perplexity"
            task = load_task(base, run.run_dir / "seed-0" / record["bundle"]).eval()
            assert _perplexity(task, ids) == pytest.approx(record["perplexity"], rel=1e-5)
    summary = result.summary()
    assert "pydoc_data.topics" in summary and "NOTE: --quick" in summary
    assert summary.count("| SPLoRA r8 |") == 1 + len(QUICK.densities)

    again = run_lm_demo(tmp_path, quick=True)  # cached source, finished runs: nothing retrains
    assert [r.records for r in again.runs] == [r.records for r in result.runs]
    assert again.source_perplexity == result.source_perplexity
