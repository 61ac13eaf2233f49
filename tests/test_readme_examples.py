"""The README's code, run end to end on small models, so the documentation cannot rot."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import spa
from spa.models import resnet18


def test_readme_channel_pruning_and_bundles(tmp_path):
    from spa.pruning import apply_masks, channel_groups, compute_masks, score

    base = resnet18(num_classes=4, small_input=True, width=8).eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    assert "skipped fc" in model.spa_report.summary()
    example = torch.randn(1, 3, 16, 16)
    data = TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(0, 4, (8,)))
    loader = DataLoader(data, batch_size=4)
    groups = channel_groups(model, example)
    scores = score(model, "taylor", groups, data=loader, loss_fn=torch.nn.functional.cross_entropy)
    apply_masks(model, compute_masks(groups, scores, density=0.3))
    assert spa.density(model) == pytest.approx(0.3, abs=0.02)
    model.eval()
    with torch.no_grad():
        masked = model(example)
    dense_flops = spa.count_flops(base, example)

    path = tmp_path / "parity.safetensors"
    spa.save_task(model, path, base_model=base, model_name="resnet18")
    task = spa.load_task(base, path)
    host = spa.TaskHost(base, cache_size=4)
    host.add_task("parity", path)
    host.set_task("parity")
    with torch.no_grad():
        torch.testing.assert_close(task(example), masked, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(host(example), masked, rtol=1e-4, atol=1e-5)
    assert host.reports()["parity"].bytes_on_disk == path.stat().st_size

    spa.compact(model)
    fast = spa.fuse(model)
    with torch.no_grad():
        torch.testing.assert_close(fast(example), masked, rtol=1e-4, atol=1e-5)
    assert spa.count_flops(fast, example) < dense_flops


def test_readme_block_pruning_of_a_tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    from spa.pruning.block_compaction import compact_bert
    from spa.pruning.block_criteria import create_block_criterion
    from spa.pruning.gradual import GradualBlockPruner, GradualPruningConfig

    config = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, num_labels=2)  # fmt: skip
    bert = BertForSequenceClassification(config).eval()
    spa.adapt(bert, spa.SPLoPAConfig(block_shape=(16, 16), num_prototypes=4,
                                     target_modules=r"encoder\.layer"))  # fmt: skip
    pruner = GradualBlockPruner(
        bert,
        create_block_criterion("movement"),
        GradualPruningConfig(final_density=0.5, warmup_steps=1, pruning_steps=3),
    )
    trainable = [p for p in bert.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01)
    inputs, labels = torch.randint(0, 40, (4, 8)), torch.tensor([0, 1, 0, 1])
    for _ in range(5):
        loss = bert(input_ids=inputs, labels=labels).loss + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        pruner.step()
    pruner.finish()
    with torch.no_grad():
        masked = bert(input_ids=inputs).logits
        small, report = compact_bert(bert)
        torch.testing.assert_close(small(input_ids=inputs).logits, masked, rtol=1e-4, atol=1e-5)
    assert report.block_density == pytest.approx(0.5, abs=0.1)
