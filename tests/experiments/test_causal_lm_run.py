"""The runner's causal-LM path on a tiny Llama and a text file: perplexity, bundles, resume."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import safetensors.torch
import torch
import transformers

from spa.errors import ConfigError
from spa.experiments.config import from_dict
from spa.experiments.runner import run
from spa.models import create_model
from spa.tasks import load_task

OPTIONS = {
    "hidden_size": 32,
    "num_layers": 1,
    "num_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_positions": 32,
}
LENGTH = 32
# The projections whose heads / neurons the units prune, and the base's total of their weights.
PRUNABLE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class Interrupted(Exception):
    """Raised by a step hook to simulate a kill after a checkpoint."""


def _write_text(path: Path) -> Path:
    words = "the cat sat on a mat and the dog ran to the big red house".split()
    rng = random.Random(0)
    lines = (" ".join(rng.choice(words) for _ in range(12)) for _ in range(120))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A text file and a (randomly initialised) tiny_llama base saved as a weights file."""
    folder = tmp_path_factory.mktemp("lm")
    torch.manual_seed(0)
    base = create_model("tiny_llama", vocab_size=256, **OPTIONS)
    weights = folder / "base.safetensors"
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in base.state_dict().items() if k != "lm_head.weight"},
        str(weights),
    )
    return {"text": _write_text(folder / "train.txt"), "weights": weights}


def _config(files: dict[str, Path], output: Path, **sections) -> dict:
    data = {
        "name": "tiny-lm",
        "seeds": [0],
        "output_dir": str(output),
        "model": {"name": "tiny_llama", "options": dict(OPTIONS), "weights": str(files["weights"])},
        "data": {
            "name": "text",
            "batch_size": 8,
            "eval_batch_size": 16,
            "options": {
                "train_file": str(files["text"]),
                "sequence_length": LENGTH,
                "byte_fallback": True,
            },
        },
        "adapter": {"kind": "splora", "rank": 2},
        "pruning": {"criterion": "taylor", "densities": [0.6, 0.3], "scoring_batches": 1},
        "train": {
            "optimizer": "adamw",
            "lr": 0.01,
            "initial_epochs": 1,
            "epochs_per_step": 1,
            "max_batches_per_epoch": 2,
        },
    }
    for section, values in sections.items():
        merge = isinstance(values, dict) and section in data and section != "adapter"
        data[section] = {**data[section], **values} if merge else values
    return data


def _base(files: dict[str, Path]) -> torch.nn.Module:
    from spa.models.loading import load_model

    options = {"vocab_size": 256, **OPTIONS}
    return load_model(files["weights"], name="tiny_llama", options=options).model.eval()


def _held_out_ids(files: dict[str, Path]) -> torch.Tensor:
    """The evaluation blocks, cut independently: the last 10% of the text from a line start."""
    text = files["text"].read_text(encoding="utf-8")
    cut = text.rfind("\n", 0, int(len(text) * 0.9)) + 1
    ids = list(text[cut:].encode("utf-8"))
    count = len(ids) // LENGTH
    return torch.tensor(ids[: count * LENGTH]).view(count, LENGTH)


def _perplexity(model: torch.nn.Module, ids: torch.Tensor) -> float:
    """exp of the mean cross-entropy of every next byte, written out here."""
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    log_probs = torch.log_softmax(logits[:, :-1].double(), dim=-1)
    picked = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)
    return math.exp(-float(picked.mean()))


def _prunable_weights(model: torch.nn.Module) -> int:
    return sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if name.rsplit(".", 1)[-1] in PRUNABLE
    )


def _comparable(records) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith("latency_")} for r in records]


@pytest.mark.slow
def test_causal_lm_run_records_perplexity_bundles_reproduce_it_and_resume(files, tmp_path):
    config = from_dict(_config(files, tmp_path))
    reference = run(config, tmp_path / "reference")

    def interrupt(seed: int, step: int, record: dict) -> None:
        if step == 1:  # after the first density's bundle and checkpoint
            raise Interrupted

    with pytest.raises(Interrupted):
        run(config, tmp_path / "resumed", step_hook=interrupt)
    steps_seen = []
    resumed = run(config, tmp_path / "resumed", step_hook=lambda s, k, r: steps_seen.append(k))
    assert steps_seen == [2]
    assert _comparable(resumed.records) == _comparable(reference.records)
    for step in ("step-01-density-0.600", "step-02-density-0.300"):
        ours = (tmp_path / "resumed" / "seed-0" / step / "task.safetensors").read_bytes()
        theirs = (tmp_path / "reference" / "seed-0" / step / "task.safetensors").read_bytes()
        assert ours == theirs

    base, ids = _base(files), _held_out_ids(files)
    base_weights = _prunable_weights(base)
    assert [r["target_density"] for r in reference.records] == [1.0, 0.6, 0.3]
    for record in reference.records:
        assert record["metric_name"] == "perplexity"
        assert math.isfinite(record["perplexity"]) and record["metric"] == record["perplexity"]
        assert record["loss"] == pytest.approx(math.log(record["perplexity"]))
        task = load_task(base, tmp_path / "reference" / "seed-0" / record["bundle"]).eval()
        # The bundle on the base is the trained task model: the same perplexity, computed here.
        assert _perplexity(task, ids) == pytest.approx(record["perplexity"], rel=1e-5)
        # Density reached, counted on the loaded (compacted) projections.
        reached = _prunable_weights(task) / base_weights
        assert reached == pytest.approx(record["density"])
        assert reached <= record["target_density"] + 1e-9
    assert reference.records[-1]["density"] < 0.6
    table = reference.report.markdown.read_text(encoding="utf-8")
    assert "| perplexity |" in table and "Score (%)" not in table


@pytest.mark.slow
@pytest.mark.parametrize(
    "adapter", [{"kind": "lora", "rank": 2}, {"kind": "fine_pruning"}], ids=lambda a: a["kind"]
)
def test_causal_lm_methods_run_and_bundles_reproduce_perplexity(files, tmp_path, adapter):
    prunes = adapter["kind"] != "lora"
    pruning = {"densities": [0.5]} if prunes else {"schedule": "none"}
    config = from_dict(_config(files, tmp_path, adapter=adapter, pruning=pruning))
    result = run(config, tmp_path)
    base, ids = _base(files), _held_out_ids(files)
    assert len(result.records) == (2 if prunes else 1)
    for record in result.records:
        task = load_task(base, tmp_path / "seed-0" / record["bundle"]).eval()
        assert _perplexity(task, ids) == pytest.approx(record["perplexity"], rel=1e-5)
    epochs = [
        json.loads(line)
        for line in (tmp_path / "seed-0" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [r["loss"] for r in epochs if r["event"] == "epoch"]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)


@pytest.mark.slow
def test_causal_lm_run_prunes_the_hidden_size_and_bundles_reproduce_perplexity(files, tmp_path):
    pruning = {"densities": [0.5], "units": ["heads", "ffn", "hidden"], "ranking": "local"}
    result = run(from_dict(_config(files, tmp_path, pruning=pruning)), tmp_path)
    base, ids = _base(files), _held_out_ids(files)
    record = result.records[-1]
    task = load_task(base, tmp_path / "seed-0" / record["bundle"]).eval()
    assert task.model.embed_tokens.embedding_dim < OPTIONS["hidden_size"]  # hidden channels gone
    assert task.model.norm.weight.numel() == task.model.embed_tokens.embedding_dim
    assert _perplexity(task, ids) == pytest.approx(record["perplexity"], rel=1e-5)


def test_causal_lm_without_tokenizer_or_fallback_names_the_key(files, tmp_path):
    data = _config(files, tmp_path)
    data["data"]["options"]["byte_fallback"] = False
    with pytest.raises(ConfigError, match=r"'data\.options\.tokenizer'.*byte_fallback"):
        run(from_dict(data), tmp_path)


def test_causal_lm_refuses_an_empty_text_file(files, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text(" \n", encoding="utf-8")
    data = _config(files, tmp_path / "run")
    data["data"]["options"]["train_file"] = str(empty)
    with pytest.raises(ConfigError, match=r"'data\.options\.train_file'.*empty"):
        run(from_dict(data), tmp_path / "run")


def test_causal_lm_refuses_a_sequence_longer_than_the_positions(files, tmp_path):
    data = _config(files, tmp_path)
    data["data"]["options"]["sequence_length"] = OPTIONS["max_positions"] + 1
    with pytest.raises(ConfigError, match=r"'data\.options\.sequence_length': 33 .* 32 positions"):
        run(from_dict(data), tmp_path)


def bert_directory(path: Path) -> Path:
    """A tiny BERT masked-LM saved as a local `transformers` directory (an encoder)."""
    config = transformers.BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertForMaskedLM(config).save_pretrained(path)
    return path


def test_causal_lm_refuses_an_encoder_model_directory(files, tmp_path):
    directory = bert_directory(tmp_path / "bert")
    model = {"name": "transformers", "path": str(directory)}
    data = _config(files, tmp_path / "run", model=model)
    with pytest.raises(ConfigError, match=r"'model\.path'.*not a causal \(decoder-only\)"):
        run(from_dict(data), tmp_path / "run")


def test_causal_lm_refuses_a_model_that_takes_no_token_ids(files, tmp_path):
    model = {"name": "mlp", "options": {}, "weights": None}
    data = _config(files, tmp_path, model=model)
    del data["model"]["weights"]
    with pytest.raises(ConfigError, match=r"'model\.name'.*'mlp' is not a causal language model"):
        run(from_dict(data), tmp_path)


def test_causal_lm_refuses_block_pruning(files, tmp_path):
    data = _config(files, tmp_path, adapter={"kind": "splopa"}, pruning={"criterion": "l0"})
    with pytest.raises(ConfigError, match=r"'adapter\.kind' = 'splopa': not supported for lang"):
        run(from_dict(data), tmp_path)


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"bogus": 1}, "data.options.bogus"),
        ({"sequence_length": "long"}, "data.options.sequence_length"),
        ({"validation_fraction": 1.5}, "data.options.validation_fraction"),
        ({"eval_file": "x.txt", "validation_fraction": 0.2}, "data.options.validation_fraction"),
    ],
)
def test_causal_lm_bad_options_name_their_key(files, tmp_path, options, key):
    data = _config(files, tmp_path)
    data["data"]["options"].update(options)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        run(from_dict(data), tmp_path)


@pytest.mark.parametrize(
    ("units", "sizes"),
    [(None, [2, 64]), (("ffn",), [64]), (("heads",), [2]), (("ffn", "hidden"), [64, 32])],
)
def test_pruning_units_choose_heads_ffn_neurons_and_the_hidden_size(units, sizes):
    import spa
    from spa.experiments.config import PruningConfig
    from spa.experiments.pruning_steps import ChannelPruner

    model = create_model("tiny_llama", **OPTIONS)
    spa.adapt(model, spa.SPLoRAConfig(rank=2, head_modules=["lm_head"]))
    ids = torch.zeros(1, 8, dtype=torch.long)
    pruner = ChannelPruner(model, ids, PruningConfig(units=units))
    # One layer: its key/value heads (2, each with 2 query heads) and its 64 FFN neurons, and
    # the model's 32 hidden channels.
    assert [group.size for group in pruner.groups] == sizes


@pytest.mark.slow
def test_causal_lm_run_with_distillation_differs_after_pruning(files, tmp_path: Path) -> None:
    plain = run(from_dict(_config(files, tmp_path / "plain")), tmp_path / "plain")
    config = from_dict(_config(files, tmp_path / "kd", distill={"weight": 0.5}))
    distilled = run(config, tmp_path / "kd")
    assert distilled.records[0]["metric"] == plain.records[0]["metric"]  # before the teacher
    assert distilled.records[-1]["metric"] != plain.records[-1]["metric"]
