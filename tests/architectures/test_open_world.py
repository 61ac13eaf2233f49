"""Every family's registered example and the named architectures, end to end (issue 21):
structure -> family, adapt -> train -> channel_groups -> masks on every supported unit ->
masked == compacted == fused == loaded bundle == TaskHost; decoders generate the same tokens
with the KV cache; `save_pretrained` reloads in plain `transformers`."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import transformers

import spa
from spa.errors import ConfigError
from spa.families import FAMILIES, describe, explain
from spa.pruning import (
    CRITERIA,
    apply_masks,
    channel_groups,
    compact,
    compute_masks,
    refresh_groups,
    score,
)
from tests._transformers import (
    adapted_after_step,
    assert_close_scaled,
    assert_deploys,
    assert_same_generation,
)
from tests.architectures._open_world import (
    ALL_UNITS,
    NAMED,
    UNMATCHED,
    Architecture,
    cases,
    markdown_table,
)

CASES = cases()
IDS = [case.name for case in CASES]
README = Path(__file__).resolve().parents[2] / "README.md"
START, END = "<!-- spa-docs:architectures -->", "<!-- /spa-docs:architectures -->"


def _trained(case: Architecture):
    """(base copy, SPLoRA-adapted model after one large SGD step, inputs, targets)."""
    torch.manual_seed(0)
    return adapted_after_step(case.build(), case.inputs)


def _prune(model, x, y, units, criterion="taylor", round_to=None, every=False):
    """Local ranking at density 0.3 (uniform layers), the hidden size a multiple of 4 (or of
    `round_to`); with `every`, each registered criterion first scores every group (finite
    scores)."""
    groups = channel_groups(model, x, units=units)
    for other in CRITERIA if every else ():
        found = score(model, other, groups, data=[(x, y)])
        assert all(bool(torch.isfinite(found[i]).all()) for i in range(len(groups))), other
    scores = score(model, criterion, groups, data=[(x, y)])
    round_to = {"hidden": 4} if round_to is None else round_to
    masks = compute_masks(groups, scores, 0.3, ranking="local", round_to=round_to)
    apply_masks(model, masks)
    return refresh_groups(model, groups)


def test_every_registered_family_has_an_example():
    assert {case.family for case in CASES} >= set(FAMILIES)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_architecture_is_matched_to_its_family_by_structure(case):
    torch.manual_seed(0)
    assert describe(case.build()).name == case.family


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_architecture_masked_equals_compacted_fused_loaded_and_hosted(case, tmp_path):
    base, model, x, y = _trained(case)
    with torch.no_grad():
        dense = model(x)
    groups = _prune(model, x, y, case.units, every=True)
    for unit in case.units:  # every unit really lost channels somewhere
        assert any(sum(g.kept) < g.size for g in groups if g.unit == unit), unit
    with torch.no_grad():
        masked = model(x)
        assert not torch.allclose(masked, dense, atol=1e-5)
    compacted = assert_deploys(model, base, x, masked, tmp_path / "task.safetensors")
    if case.decoder:
        assert_same_generation(model, compacted, base, tmp_path / "generation.safetensors")


FIXED_HEADS = [case for case in CASES if FAMILIES.get(case.family).attention.fixed_heads]


@pytest.mark.parametrize("case", FIXED_HEADS, ids=lambda c: c.name)
def test_architecture_with_fixed_heads_refuses_heads_in_one_line_before_any_mask(case):
    _, model, x, _ = _trained(case)
    with pytest.raises(ConfigError, match=r"\.0\..*heads cannot be pruned") as caught:
        channel_groups(model, x, units=ALL_UNITS)
    assert "\n" not in str(caught.value) and "heads" not in case.units
    assert all(bool(layer.out_mask.all()) for _, layer in spa.adapter_layers(model))
    units = {group.unit for group in channel_groups(model, x, units=case.units)}
    assert units == set(case.units)  # FFN and hidden size still prune (end to end above)


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c.export], ids=lambda c: c.name)
def test_architecture_save_pretrained_reloads_in_plain_transformers(case, tmp_path):
    _, model, x, y = _trained(case)
    groups = _prune(model, x, y, case.export, "weight", spa.pretrained_round_to(model))
    for unit in case.export:  # every exported unit really lost channels somewhere
        assert any(sum(g.kept) < g.size for g in groups if g.unit == unit), unit
    hf_model = model.model
    with torch.no_grad():
        expected = model(x)
        compacted = compact(copy.deepcopy(model), x)(x)
    spa.save_pretrained(hf_model, tmp_path / "export")
    reloaded = getattr(transformers, case.example.model).from_pretrained(tmp_path / "export")
    with torch.no_grad():
        got = type(model)(reloaded.eval(), model.kind)(x)
    assert_close_scaled(got, expected)
    assert_close_scaled(got, compacted)
    assert sum(p.numel() for p in reloaded.parameters()) < sum(
        p.numel() for p in case.build().parameters()
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "unit"),
    [(c, unit) for c in CASES for unit in c.refused],
    ids=lambda value: value if isinstance(value, str) else value.name,
)
def test_architecture_save_pretrained_refuses_what_its_config_cannot_describe(case, unit, tmp_path):
    _, model, x, y = _trained(case)
    _prune(model, x, y, (unit,), "weight")
    with pytest.raises(spa.errors.ConfigError) as refusal:
        spa.save_pretrained(model.model, tmp_path / "export")
    assert "\n" not in str(refusal.value)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left behind


def test_every_refused_export_names_its_reason():
    for case in CASES:
        assert bool(case.refused) == bool(case.refusal), case.name
        assert set(case.units) <= {*case.export, *case.refused}, case.name


def test_readme_architecture_table_is_generated_from_the_cases():
    text = README.read_text()
    assert START in text and END in text, "README lacks the architecture table markers"
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    assert table == markdown_table(), "python -m tests.architectures._open_world README.md"


def test_named_architectures_need_no_family_of_their_own():
    registered = {example.config for f in FAMILIES for example in FAMILIES.get(f).examples}
    assert not registered & {case.example.config for case in NAMED}


@pytest.mark.parametrize("name", list(UNMATCHED))
def test_unmatched_architecture_has_no_family_and_explain_names_what_did_not_fit(name):
    example, _ = UNMATCHED[name]
    case = Architecture(name, example, family="")
    model = case.build()
    assert describe(model) is None
    assert all(f"{family}: " in explain(model) for family in FAMILIES)


def test_fused_rows_that_divide_into_the_wrong_head_count_refuse_heads_in_one_line():
    """GPTBigCode's multi-query c_attn (32 + 8 + 8 rows) divides into 2 GPT-2 heads of 24 rows;
    its attention keeps 4 heads: heads are refused when the groups are built (they failed at
    compaction, after training)."""
    case = next(case for case in NAMED if case.name == "gpt_bigcode")
    model = spa.adapt(case.build(), spa.SPLoRAConfig(rank=2))
    pattern = r"attn\.num_heads is 4, but its projections' rows give 2 heads of 8 rows"
    with pytest.raises(ConfigError, match=pattern) as error:
        channel_groups(model, case.inputs(), units=("heads", "ffn"))
    assert "\n" not in str(error.value)


def test_a_norm_outside_the_described_stream_refuses_the_hidden_size_in_one_line():
    """XGLM has OPT's blocks but a final `layer_norm` OPT's layout does not name: the hidden size
    is refused when the groups are built (it failed at compaction, after training)."""
    case = next(case for case in NAMED if case.name == "xglm")
    model = spa.adapt(case.build(), spa.SPLoRAConfig(rank=2))
    pattern = r"^model family 'opt': the norm model\.model\.layer_norm over 32 channels"
    with pytest.raises(ConfigError, match=pattern) as error:
        channel_groups(model, case.inputs(), units=("hidden",))
    assert "\n" not in str(error.value)
    assert {g.unit for g in channel_groups(model, case.inputs(), units=("heads", "ffn"))} == {
        "heads",
        "ffn",
    }
