"""SpaPruningCallback inside a real transformers.Trainer: densities visited, bundles == model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

import spa
from spa.errors import ConfigError
from spa.integrations import BlockSchedule, ChannelSchedule, SpaPruningCallback
from spa.pruning import ChannelPruningConfig
from spa.pruning.gradual import GradualPruningConfig


class Classifier(nn.Module):
    """A tiny MLP that returns `(loss, logits)` with labels and logits without, as HF models do."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x, labels=None):
        logits = self.head(self.body(x))
        if labels is None:
            return logits
        return nn.functional.cross_entropy(logits, labels), logits


class Rows(torch.utils.data.Dataset):
    def __init__(self, features: dict[str, torch.Tensor]) -> None:
        self.features = features

    def __len__(self) -> int:
        return len(next(iter(self.features.values())))

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.features.items()}


def _args(tmp_path, steps: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(tmp_path / "trainer"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=1e-2,
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )


def _trainer(model, base, schedule, data, example, tmp_path, steps=None, callbacks=()):
    """A `Trainer` of `model` whose `SpaPruningCallback` runs `schedule` (bundles under
    tmp_path/bundles); `steps` defaults to the schedule's. Returns (trainer, callback)."""
    callback = SpaPruningCallback(
        schedule, base_model=base, output_dir=tmp_path / "bundles", example_inputs=example
    )
    trainer = Trainer(
        model=model,
        args=_args(tmp_path, steps or schedule.total_steps()),
        train_dataset=data,
        callbacks=[callback, *callbacks],
    )
    return trainer, callback


def _prunable_weights(model: nn.Module, names: list[str]) -> int:
    return sum(model.get_submodule(name).weight.numel() for name in names)


def test_channel_schedule_visits_densities_and_bundles_equal_model(tmp_path):
    torch.manual_seed(0)
    base = Classifier()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    adapted = [name for name, _ in spa.adapter_layers(model)]
    x = torch.randn(64, 8)
    data = Rows({"x": x, "labels": (x[:, 0] > 0).long() + (x[:, 1] > 0).long()})
    schedule = ChannelSchedule(
        densities=(0.7, 0.4),
        steps_per_density=3,
        initial_steps=2,
        pruning=ChannelPruningConfig(criterion="taylor"),
    )
    trainer, callback = _trainer(model, base, schedule, data, x[:4], tmp_path)
    trainer.train()

    assert [r.target for r in callback.history] == [0.7, 0.4]
    assert [r.step for r in callback.history] == [5, 8]
    base_weights = _prunable_weights(base, adapted)
    for record in callback.history:
        loaded = spa.load_task(base, record.bundle)
        # Independent density: the loaded (compacted, plain) layers' weights over the base's.
        reached = _prunable_weights(loaded, adapted) / base_weights
        assert reached == pytest.approx(record.reached)
        assert reached <= record.target + 1e-9
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)
    # The optimizer still holds exactly the model's trainable parameters.
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


def _tiny_bert() -> BertForSequenceClassification:
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    return BertForSequenceClassification(config).eval()


def test_block_schedule_reaches_final_density_and_bundle_equals_model(tmp_path):
    torch.manual_seed(0)
    base = _tiny_bert()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoPAConfig(block_shape=(8, 8), num_prototypes=4))
    ids = torch.randint(0, 50, (32, 12))
    data = Rows({"input_ids": ids, "labels": (ids[:, 0] % 2).long()})
    gradual = GradualPruningConfig(final_density=0.5, pruning_steps=4, update_every=1)
    schedule = BlockSchedule(criterion="magnitude", gradual=gradual)
    trainer, callback = _trainer(model, base, schedule, data, {"input_ids": ids[:2]}, tmp_path, 5)
    trainer.train()

    (record,) = callback.history
    loaded = spa.load_task(base, record.bundle)
    # Independent: count the all-zero 8x8 blocks of the loaded task's adapted weights.
    kept = total = 0
    for name, _ in spa.adapters.block_prunable_layers(model):
        weight = loaded.get_submodule(name).weight.detach()
        blocks = weight.reshape(weight.shape[0] // 8, 8, -1, 8).abs().sum(dim=(1, 3))
        kept += int((blocks > 0).sum())
        total += blocks.numel()
    assert kept / total == pytest.approx(0.5, abs=0.02)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=ids[:4]).logits
        torch.testing.assert_close(loaded(input_ids=ids[:4]).logits, expected, rtol=1e-5, atol=1e-6)


def test_schedule_longer_than_max_steps_is_refused(tmp_path):
    base = Classifier()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    x = torch.randn(16, 8)
    schedule = ChannelSchedule(densities=(0.5,), steps_per_density=10)
    data = Rows({"x": x, "labels": torch.zeros(16, dtype=torch.long)})
    trainer, _ = _trainer(model, base, schedule, data, x[:2], tmp_path, steps=3)
    with pytest.raises(ConfigError, match="needs 10 optimizer steps"):
        trainer.train()


@pytest.mark.parametrize(
    "densities", [(), (0.5, 0.7), (1.5,)], ids=["empty", "increasing", "above-one"]
)
def test_channel_schedule_rejects_bad_densities(densities):
    with pytest.raises(ConfigError, match="densities"):
        ChannelSchedule(densities=densities, steps_per_density=1)


def test_compact_with_optimizer_slices_state_like_the_parameters():
    from spa.integrations import compact_with_optimizer
    from spa.pruning import apply_masks, channel_groups, compute_masks, score

    torch.manual_seed(0)
    model = spa.adapt(Classifier(), spa.SPLoRAConfig(rank=2, trainable=("head", "bias")))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(16, 8)
    model(x).square().sum().backward()
    optimizer.step()
    groups = channel_groups(model, x[:2])
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.5))
    layer = model.body[2]
    rows = layer.out_mask.nonzero().flatten()  # kept output channels, by the explicit mask
    before = {k: v.clone() for k, v in optimizer.state[layer.down].items()}
    head_before = optimizer.state[model.head.weight]["exp_avg_sq"].clone()
    compact_with_optimizer(model, optimizer)
    state = optimizer.state[layer.down]
    assert layer.down.shape[0] == len(rows) < 16
    torch.testing.assert_close(state["exp_avg"], before["exp_avg"][rows], rtol=0, atol=0)
    torch.testing.assert_close(state["exp_avg_sq"], before["exp_avg_sq"][rows], rtol=0, atol=0)
    assert torch.equal(state["step"], before["step"])
    # The head reads the kept channels of the last layer: its columns are sliced alike.
    torch.testing.assert_close(
        optimizer.state[model.head.weight]["exp_avg_sq"], head_before[:, rows], rtol=0, atol=0
    )
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters() if p.requires_grad}
    assert all(optimizer.state[p]["exp_avg"].shape == p.shape for p in held)
    model(x).square().sum().backward()  # training continues on the compacted model
    optimizer.step()


def test_channel_schedule_compacts_the_trained_model_at_every_density(tmp_path):
    torch.manual_seed(0)
    base = Classifier()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    x = torch.randn(64, 8)
    data = Rows({"x": x, "labels": (x[:, 0] > 0).long()})
    sizes = []

    class Sizes(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            sizes.append(sum(p.numel() for p in model.parameters()))

    schedule = ChannelSchedule(densities=(0.7, 0.4), steps_per_density=2, initial_steps=1)
    trainer, callback = _trainer(model, base, schedule, data, x[:4], tmp_path, callbacks=[Sizes()])
    unpruned = sum(p.numel() for p in model.parameters())
    trainer.train()
    # Compacted at steps 1 (density 0.7) and 3 (0.4), the sizes seen after each step's events.
    assert unpruned > sizes[0] == sizes[1] > sizes[2] == sizes[3]
    assert sizes[-1] == sum(p.numel() for p in model.parameters())
    model.eval()
    loaded = spa.load_task(base, callback.history[-1].bundle)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-6)


def test_compact_with_optimizer_carries_norm_and_tied_embedding_state_over_the_hidden_size():
    from spa.integrations import compact_with_optimizer
    from spa.models.tiny_lm import tiny_llama
    from spa.pruning import apply_masks, channel_groups, compute_masks, score

    torch.manual_seed(0)
    model = spa.adapt(tiny_llama(), spa.SPLoRAConfig(rank=2, trainable=("norm", "head")))
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, trained as the head
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    ids = torch.randint(0, 256, (2, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    groups = channel_groups(model, None, units=("hidden",))
    apply_masks(model, compute_masks(groups, score(model, "weight", groups), 0.6))
    kept = model.model.norm.spa_out_mask.nonzero().flatten()  # by the explicit mask
    norm, table = model.model.norm.weight, model.model.embed_tokens.weight
    norm_before = optimizer.state[norm]["exp_avg"].clone()
    table_before = optimizer.state[table]["exp_avg_sq"].clone()
    compact_with_optimizer(model, optimizer)
    assert 0 < len(kept) < 64 and model.model.norm.weight.shape == (len(kept),)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied again
    state = optimizer.state
    torch.testing.assert_close(state[model.model.norm.weight]["exp_avg"], norm_before[kept])
    torch.testing.assert_close(
        state[model.model.embed_tokens.weight]["exp_avg_sq"], table_before[:, kept]
    )
    held = [p for group in optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in held} == {id(p) for p in model.parameters() if p.requires_grad}
    model(input_ids=ids, labels=ids).loss.backward()  # training continues, smaller
    optimizer.step()


@pytest.mark.slow
def test_channel_schedule_prunes_a_decoders_hidden_size_and_bundles_equal_the_model(tmp_path):
    from spa.models.tiny_lm import tiny_llama

    torch.manual_seed(0)
    base = tiny_llama().eval()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2, trainable=("norm",)))
    ids = torch.randint(0, 256, (32, 8))
    pruning = ChannelPruningConfig(units=("heads", "ffn", "hidden"), ranking="local")
    schedule = ChannelSchedule(densities=(0.7,), steps_per_density=2, pruning=pruning)
    data = Rows({"input_ids": ids, "labels": ids})
    trainer, callback = _trainer(model, base, schedule, data, ids[:2], tmp_path)
    trainer.train()
    assert model.model.embed_tokens.embedding_dim < 64  # the hidden size was removed
    model.eval()
    loaded = spa.load_task(base, callback.history[-1].bundle)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(input_ids=ids[:4]).logits, model(input_ids=ids[:4]).logits, rtol=1e-5, atol=1e-5
        )


def test_channel_schedule_with_distillation_trains_on_the_kl_to_the_unpruned_model(tmp_path):
    from spa.recovery import DistillConfig

    torch.manual_seed(0)
    base = Classifier()
    model = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=2))
    x = torch.randn(64, 8)
    labels = (x[:, 0] > 0).long()
    data = Rows({"x": x, "labels": labels})
    schedule = ChannelSchedule(
        densities=(0.5,), steps_per_density=4, initial_steps=2, compact=False
    )
    config = DistillConfig(weight=1.0, temperature=2.0)
    with pytest.raises(ConfigError, match="compact=False"):
        SpaPruningCallback(
            ChannelSchedule(densities=(0.5,), steps_per_density=1),
            base_model=base,
            output_dir=tmp_path,
            example_inputs=x[:4],
            distill=config,
        )
    callback = SpaPruningCallback(
        schedule, base_model=base, output_dir=tmp_path / "b", example_inputs=x[:4], distill=config
    )
    expected = []

    class Expect(TrainerCallback):  # the recovery loss of the last step, before its update
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            if state.global_step == 5:
                expected.append(_kl_to_snapshot(model, callback.teacher.state, x))

    args = _args(tmp_path, 6)
    args.per_device_train_batch_size, args.logging_strategy, args.logging_steps = 64, "steps", 1
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback, Expect()])
    trainer.train()
    losses = [float(entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    assert losses[-1] == pytest.approx(expected[0], rel=1e-3)
    model.train()
    loss, _ = model(x, labels=labels)  # the hook is gone after training: the task loss again
    task = nn.functional.cross_entropy(model(x), labels)
    assert float(loss.detach()) == pytest.approx(float(task.detach()))


def _kl_to_snapshot(model, state, x) -> float:
    """T=2 KL of `model` to an independent teacher: a copy with the snapshot loaded and every
    mask cleared."""
    teacher = copy.deepcopy(model)
    teacher.load_state_dict(dict(state), strict=False)
    for buffer in teacher.buffers():
        if buffer.dtype == torch.bool:
            buffer.fill_(True)
    with torch.no_grad():
        reference, student = teacher.eval()(x), copy.deepcopy(model).eval()(x)
    assert not torch.allclose(reference, student)  # pruned: the two differ
    kl = nn.functional.kl_div(
        torch.log_softmax(student / 2.0, -1),
        torch.log_softmax(reference / 2.0, -1),
        log_target=True,
        reduction="batchmean",
    )
    return float(kl) * 4.0
