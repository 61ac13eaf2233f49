"""`spa.save_pretrained`: directories plain `transformers` loads, refusals that leave nothing."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import spa
import spa.tasks.pretrained
import spa.tasks.rebuild
from spa.errors import ConfigError, SpaWarning
from spa.models.tiny_lm import tiny_llama
from spa.pruning import apply_masks, channel_groups, compute_masks
from tests._transformers import FFN, bert, gpt2
from tests.families.test_pretrained import pruned
from tests.tasks.test_pretrained_open import _uneven_experts

GENERATE = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}

# Runs in a fresh interpreter that never imports spa: load every exported directory with the
# transformers Auto class, run it (and greedy decoding with the KV cache), save the results.
LOAD_WITHOUT_SPA = """
import sys, torch, transformers
cases, results = torch.load(sys.argv[1]), {}
for name, case in cases.items():
    model = getattr(transformers, case["auto"]).from_pretrained(case["directory"]).eval()
    with torch.no_grad():
        results[name] = {"logits": model(case["input_ids"]).logits}
        if "prompt" in case:
            results[name]["generated"] = model.generate(case["prompt"], **case["generate"])
results["spa_imported"] = any(name.split(".")[0] == "spa" for name in sys.modules)
torch.save(results, sys.argv[2])
"""


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _non_uniform_llama():
    """Layer 0 keeps one key/value head (2 query heads), layer 1 keeps both (4)."""
    model = spa.adapt(tiny_llama(), spa.SPLoRAConfig(rank=2))
    groups = channel_groups(model, None, units=("heads",))
    scores = {i: torch.ones(g.size) for i, g in enumerate(groups)}
    scores[0] = torch.tensor([0.0, 1.0])
    apply_masks(model, compute_masks(groups, scores, density=0.95))
    return model.eval()


def _config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_non_uniform_heads_are_refused_and_nothing_is_written(tmp_path):
    model = _non_uniform_llama()
    with pytest.raises(ConfigError, match=r"model.layers.0 keeps 2.*ranking='local'"):
        spa.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # no directory, no temporary left behind


def test_a_non_empty_directory_is_kept_unless_overwrite(tmp_path):
    model = pruned(tiny_llama())
    target = tmp_path / "out"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match=r"out exists and is not empty; pass overwrite=True"):
        spa.save_pretrained(model, target)
    assert [p.name for p in target.iterdir()] == ["notes.txt"]
    spa.save_pretrained(model, target, overwrite=True)
    assert not (target / "notes.txt").exists()
    assert _config(target)["num_key_value_heads"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # the old one is gone too


def test_a_model_that_is_not_a_transformers_model_is_refused(tmp_path):
    from tests._transformers import llama

    wrapped = spa.adapt(llama(), spa.SPLoRAConfig(rank=2))  # a plain nn.Module around it
    with pytest.raises(ConfigError, match=r"Net is not a transformers model"):
        spa.save_pretrained(wrapped, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_shape_the_config_does_not_describe_is_refused_before_writing(tmp_path, monkeypatch):
    # Config values that forgot the FFN width: the strict rebuild catches it.
    model = pruned(gpt2().model, units=("ffn",), density=0.75)
    monkeypatch.setattr(spa.tasks.pretrained, "config_values", lambda *_: {})
    with pytest.raises(ConfigError, match=r"transformer.h.0.mlp.c_fc.weight has shape"):
        spa.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_failure_after_writing_removes_the_temporary_directory(tmp_path, monkeypatch):
    compare = spa.tasks.pretrained._compare

    def reload_fails(candidate, inputs, expected, tolerance, what):
        if what.startswith("the model loaded from"):
            assert any(tmp_path.iterdir())  # the files were written beside the destination
            raise ConfigError("simulated: the written directory does not load")
        compare(candidate, inputs, expected, tolerance, what)

    monkeypatch.setattr(spa.tasks.pretrained, "_compare", reload_fails)
    with pytest.raises(ConfigError, match="simulated"):
        spa.save_pretrained(pruned(tiny_llama()), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_an_lm_head_that_left_its_tied_embedding_is_saved_untied(tmp_path):
    import transformers

    model = pruned(tiny_llama())  # tie_word_embeddings=True
    head = model.lm_head.weight.detach()
    model.lm_head.weight = torch.nn.Parameter(head + 0.1 * torch.randn_like(head))  # trained
    spa.save_pretrained(model, tmp_path / "out")
    assert _config(tmp_path / "out")["tie_word_embeddings"] is False
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, 256, (2, 5))
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Llama (heads + FFN, and heads + FFN + hidden size), GPT-2 (FFN; heads with the hidden
    size), Mixtral (uneven experts) and BERT (FFN) exported by spa and loaded back by a Python
    process that never imports spa."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("pretrained")
    models = {
        "llama": (pruned(tiny_llama()), "AutoModelForCausalLM"),
        "llama-hidden": (
            pruned(tiny_llama(), units=("heads", "ffn", "hidden"), round_to={"hidden": 4}),
            "AutoModelForCausalLM",
        ),
        "gpt2": (pruned(gpt2().model, units=("ffn",), density=0.75), "AutoModelForCausalLM"),
        # GPT-2 derives the head size as n_embd / n_head: heads and hidden size together.
        "gpt2-heads-hidden": (
            pruned(
                gpt2().model,
                units=("heads", "hidden"),
                round_to=spa.pretrained_round_to(gpt2().model),
            ),
            "AutoModelForCausalLM",
        ),
        # Experts of different widths, padded with zero neurons into transformers' 3-D tensors.
        "mixtral": (_uneven_experts("mixtral"), "AutoModelForCausalLM"),
        "bert": (
            pruned(bert().model, units=("ffn",), density=0.75),
            "AutoModelForSequenceClassification",
        ),
    }
    cases, expected = {}, {}
    for name, (model, auto) in models.items():
        ids = torch.randint(1, model.config.vocab_size, (2, 7))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SpaWarning)  # the experts' padding
            spa.save_pretrained(model, root / name)
        cases[name] = {"auto": auto, "directory": str(root / name), "input_ids": ids}
        expected[name] = {"logits": _logits(model, ids), "model": model}
    prompt = torch.randint(1, 256, (1, 4))
    for name in ("llama", "llama-hidden"):
        cases[name].update(prompt=prompt, generate=GENERATE)
        compacted = spa.fuse(spa.compact(copy.deepcopy(models[name][0])))
        with torch.no_grad():
            expected[name]["generated"] = compacted.generate(prompt, **GENERATE)
    torch.save(cases, root / "cases.pt")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_SPA, root / "cases.pt", root / "results.pt"],
        cwd=root,
        env={**environment, "OMP_NUM_THREADS": "1"},
        check=True,
        capture_output=True,
        timeout=300,
    )
    return root, expected, torch.load(root / "results.pt")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["llama", "llama-hidden", "gpt2", "gpt2-heads-hidden", "mixtral", "bert"]
)
def test_transformers_alone_loads_the_export_with_spa_outputs(exported, name):
    root, expected, results = exported
    assert results["spa_imported"] is False
    reference = expected[name]["logits"]
    tolerance = 1e-5 * float(reference.abs().max())
    torch.testing.assert_close(results[name]["logits"], reference, rtol=1e-5, atol=tolerance)


@pytest.mark.slow
def test_exported_configs_hold_the_kept_counts(exported):
    root, expected, _ = exported
    llama = _config(root / "llama")
    assert (llama["num_attention_heads"], llama["num_key_value_heads"]) == (2, 1)
    gpt2_config = _config(root / "gpt2-heads-hidden")  # head size n_embd / n_head: still 8
    assert 0 < gpt2_config["n_head"] < 4 and gpt2_config["n_embd"] == 8 * gpt2_config["n_head"]
    assert (llama["intermediate_size"], llama["head_dim"], llama["hidden_size"]) == (64, 16, 64)
    hidden = expected["llama-hidden"]["model"]
    kept = int(hidden.model.norm.spa_out_mask.sum())  # the final RMSNorm's hidden channels
    assert 0 < kept < 64 and kept % 4 == 0  # round_to={"hidden": 4}: whole heads' worth
    assert _config(root / "llama-hidden")["hidden_size"] == kept
    readers = [layer for name, layer in spa.adapter_layers(hidden) if "q_proj" in name]
    assert {int(layer.in_mask.sum()) for layer in readers} == {kept}
    for name, key, path in (
        ("gpt2", "n_inner", "transformer.h.{}.mlp.c_fc"),
        ("bert", "intermediate_size", "bert.encoder.layer.{}.intermediate.dense"),
    ):
        model = expected[name]["model"]
        kept = {int(model.get_submodule(path.format(i)).out_mask.sum()) for i in range(2)}
        assert kept == {_config(root / name)[key]}
        assert 0 < _config(root / name)[key] < FFN


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama", "llama-hidden"])
def test_exported_llama_generates_the_compacted_models_tokens(exported, name):
    _, expected, results = exported
    assert torch.equal(results[name]["generated"], expected[name]["generated"])
    assert results[name]["generated"].shape == (1, 4 + 8)


def test_a_hidden_size_the_config_refuses_is_refused_naming_round_to(tmp_path):
    model = pruned(tiny_llama(), units=("hidden",), density=0.65)
    kept = int(model.model.norm.spa_out_mask.sum())
    assert kept % 4  # not a multiple of the 4 heads: LlamaConfig refuses it
    with pytest.raises(ConfigError, match=r"LlamaConfig refuses.*round_to=\{'hidden': heads\}"):
        spa.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bert_with_a_pruned_hidden_size_is_refused_naming_the_option(tmp_path):
    model = pruned(bert().model, units=("hidden",), density=0.75)
    message = r"bert.pooler.dense writes 32 channels.*hidden size unpruned \(units without"
    with pytest.raises(ConfigError, match=message):
        spa.save_pretrained(model, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_rebuild_takes_the_models_tensors_without_initialising_new_ones(monkeypatch):
    from spa.tasks.pretrained import _exported_config
    from spa.tasks.rebuild import rebuild

    plain = spa.fuse(spa.compact(pruned(tiny_llama()))).eval()
    rebuilt, recomputed = rebuild(plain, _exported_config(plain))
    assert recomputed == []  # a float32 model's rotary buffers are transformers' own values
    storage = {p.data_ptr() for p in plain.parameters()}
    assert all(p.data_ptr() in storage for p in rebuilt.parameters())  # no new weights
    assert rebuilt.lm_head.weight is rebuilt.model.embed_tokens.weight  # tied again
    assert not any(t.is_meta for t in [*rebuilt.parameters(), *rebuilt.buffers()])
    ids = torch.randint(0, 256, (2, 5))
    torch.testing.assert_close(_logits(rebuilt, ids), _logits(plain, ids), rtol=0, atol=0)
    # A buffer spa cannot take from the model: the model is built for real instead.
    monkeypatch.setattr(spa.tasks.rebuild, "_take_buffers", lambda rebuilt, plain, loaded: None)
    fallback, _ = rebuild(plain, _exported_config(plain))
    torch.testing.assert_close(_logits(fallback, ids), _logits(plain, ids), rtol=0, atol=0)
