"""`spa.save_pretrained` for bfloat16 and float16 models: accepted with a tolerance that follows
the dtype, and the directory reloads equal to the compacted model (issue 22 item 6)."""

from __future__ import annotations

import copy

import pytest
import torch
import transformers

import spa
from spa.errors import SpaWarning
from spa.models.tiny_lm import tiny_llama
from tests.families.test_pretrained import pruned


def _built_in(dtype: torch.dtype) -> transformers.LlamaForCausalLM:
    """The tiny Llama built directly in `dtype`, as `from_pretrained(..., dtype=)` builds it."""
    config = tiny_llama().config
    return transformers.LlamaForCausalLM._from_config(config, dtype=dtype)


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits.float()


def _export_and_reload(model, directory):
    spa.save_pretrained(model, directory)
    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_reduced_precision_export_reloads_equal_to_the_compacted_model(dtype, tmp_path):
    model = pruned(_built_in(dtype), units=("heads", "ffn", "hidden"), round_to={"hidden": 4})
    reloaded = _export_and_reload(model, tmp_path / "out")
    assert reloaded.dtype == dtype
    compacted = spa.fuse(spa.compact(copy.deepcopy(model))).eval()
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(_logits(reloaded, ids), _logits(compacted, ids), rtol=0, atol=0)
    masked = _logits(model, ids)  # masked == exported, in float32, within the dtype's rounding
    error = (_logits(reloaded, ids) - masked).abs().max() / masked.abs().max()
    assert error <= 2 * torch.finfo(dtype).eps


def _rotary_frequencies(config) -> torch.Tensor:
    """RoPE's `1 / theta^(2i / d)` in float32, written out (Su et al. 2021)."""
    dim = config.hidden_size // config.num_attention_heads
    theta = config.rope_parameters["rope_theta"]
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)


@pytest.mark.slow
def test_a_model_cast_to_bfloat16_exports_transformers_rotary_values_and_says_so(tmp_path):
    model = pruned(tiny_llama().to(torch.bfloat16), units=("heads", "ffn"))
    assert model.model.rotary_emb.inv_freq.dtype == torch.bfloat16  # rounded by .to()
    with pytest.warns(SpaWarning, match=r"rotary_emb\.inv_freq.*float32.*moves the outputs"):
        reloaded = _export_and_reload(model, tmp_path / "out")
    compacted = spa.fuse(spa.compact(copy.deepcopy(model))).eval()
    exact = _rotary_frequencies(model.config)
    compacted.model.rotary_emb.inv_freq = exact
    compacted.model.rotary_emb.original_inv_freq = exact.clone()
    ids = torch.randint(0, 256, (2, 9))
    torch.testing.assert_close(_logits(reloaded, ids), _logits(compacted, ids), rtol=0, atol=0)
