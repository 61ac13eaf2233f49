"""The path of a model through `save_task` goes down the save layers only, through <= 12 places.

The metric (issue 20, item 4): `save_task` is profiled (`sys.setprofile`) on a compacted SPLoRA
ConvNet (also signed), a compacted fine-pruned ConvNet, a SPLoPA and a block fine-pruned MLP
(the generic codec) and a tiny Llama with pruned heads, FFN and hidden size, once computing its
facts and once handed them (`facts=`). A *place* is a spa module whose code runs while
`save_task` runs; its *functions* are the named functions entered there (comprehensions and
lambdas belong to their function).

Not counted, and not followed (what they call is part of them):

- foundations that every spa call uses: `spa/_*.py` (argument checks, registry, atomic files),
  `spa/errors.py`, `spa/adapters/protocols.py` (the adapter protocols' `isinstance`), and the
  module of the adapter layers' own class (`spa/adapters/<kind>/layer.py`: attribute access,
  `kind`, `weight_mask`, ...), found from the model's layers.
- the entry call of each stage that hands the writer its inputs, `STAGES`: the checks
  (`spa.tasks.save_checks.check_save`: adapted base, compaction, module trees, whole heads) and
  the facts (`spa.tasks.facts.task_facts`: architecture, fingerprints, density, dParams,
  adapter, trained modules), computed by their own modules. Each counts as ONE place, is
  entered by exactly one call, and never calls `save_task` or its steps (below a stage, only
  layers deeper than the steps may run).

Every other module entered must be on the save layering, `LAYERS`, in its order: save -> steps
(layers, metadata, codecs) -> the kind's codec -> the codec toolkit (`spa/codec`) -> the format
-> files (`spa/_files.py`, a foundation). A *climb* is a call from a module into a module of an
earlier layer. Asserted: at most 12 places, no climb, no module off the layering, and every
function on the path at most 60 lines long.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import spa
from spa.tasks import save_task
from spa.tasks.facts import task_facts

from .._transformers import llama
from ..conftest import ConvNet, mlp
from ..families.test_pretrained import pruned
from .helpers import pruned_task, trained_task

SPA = Path(spa.__file__).parent
LAYERS = (
    ("save", ("spa/tasks/save.py",)),
    ("steps", ("spa/tasks/save_layers.py", "spa/tasks/save_metadata.py", "spa/tasks/codecs.py")),
    # A kind's codec; the generic codec with the `layer_options` hook of a kind without one.
    (
        "kind codec",
        ("spa/adapters/*/codec.py", "spa/tasks/generic_layers.py", "spa/adapters/*/__init__.py"),
    ),
    ("codec toolkit", ("spa/codec/*.py",)),
    ("format", ("spa/tasks/format.py", "spa/tasks/bitmasks.py", "spa/tasks/signing.py")),
    ("files", ("spa/_files.py",)),
)
STAGES = {"spa/tasks/save_checks.py": "check_save", "spa/tasks/facts.py": "task_facts"}
STAGE_LEVEL = 1  # stages are steps of `save_task`: below them, only deeper layers
FOUNDATIONS = ("spa/_*.py", "spa/errors.py", "spa/adapters/protocols.py")
MAX_PLACES, MAX_LINES = 12, 60


@functools.cache
def _module(filename: str) -> str | None:
    """`spa/...py` for a file of the spa package, else None."""
    path = Path(filename)
    return f"spa/{path.relative_to(SPA).as_posix()}" if path.is_relative_to(SPA) else None


@functools.cache
def _level(module: str) -> int | None:
    for level, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatch(module, pattern) for pattern in patterns):
            return level
    return None


@dataclass
class SavePath:
    """What one `save_task` call entered: places, functions, stage calls, climbs, strays."""

    opaque: frozenset[str]
    places: set[str] = field(default_factory=set)
    functions: set = field(default_factory=set)  # code objects
    stage_calls: Counter = field(default_factory=Counter)
    climbs: set[tuple[str, str]] = field(default_factory=set)
    strays: set[str] = field(default_factory=set)
    stage_reentries: set[str] = field(default_factory=set)

    def enter(self, frame) -> None:
        """Record a call into spa code below `save_task` (see the module docstring)."""
        module = _module(frame.f_code.co_filename)
        caller, stage = None, None
        ancestor = frame.f_back
        while ancestor is not None:
            found = _module(ancestor.f_code.co_filename)
            if found is not None:
                caller = caller or found
                if found in STAGES:
                    stage = found
                elif found in self.opaque:
                    return  # inside a foundation: part of it
            ancestor = ancestor.f_back
        if stage is not None:
            if (level := _level(module)) is not None and level <= STAGE_LEVEL:
                self.stage_reentries.add(f"{stage} -> {module}")
            return
        if module in self.opaque:
            return
        self.places.add(module)
        if not frame.f_code.co_name.startswith("<"):
            self.functions.add(frame.f_code)
        if module in STAGES:
            self.stage_calls[(module, frame.f_code.co_name)] += 1
            return
        level = _level(module)
        if level is None:
            self.strays.add(module)
        elif caller is not None and (above := _level(caller)) is not None and level < above:
            self.climbs.add((caller, module))


def _opaque(model: torch.nn.Module) -> frozenset[str]:
    """Foundation modules, with the module of every adapter layer class of `model`."""
    found = {_module(inspect.getsourcefile(type(layer))) for _, layer in spa.adapter_layers(model)}
    for path in SPA.rglob("*.py"):
        module = _module(str(path))
        if any(fnmatch.fnmatch(module, pattern) for pattern in FOUNDATIONS):
            found.add(module)
    return frozenset(found)


def profile_save(model, base, path, **options) -> SavePath:
    """Run `save_task` under a profiler; return what it entered."""
    seen = SavePath(_opaque(model))
    root = save_task.__code__

    def tracer(frame, event, _):
        if event == "call" and _module(frame.f_code.co_filename) and frame.f_code is not root:
            below = frame.f_back
            while below is not None and below.f_code is not root:
                below = below.f_back
            if below is not None:
                seen.enter(frame)

    sys.setprofile(tracer)
    try:
        save_task(model, path, base_model=base, **options)
    finally:
        sys.setprofile(None)
    seen.places.add("spa/tasks/save.py")
    seen.functions.add(root)
    return seen


CASES = {
    "splora": lambda: (ConvNet().eval(), spa.SPLoRAConfig(rank=2), {}),
    "fine-pruning": lambda: (ConvNet().eval(), spa.FinePruningConfig(), {}),
    "splora-signed": lambda: (
        ConvNet().eval(),
        spa.SPLoRAConfig(rank=2),
        {"signing_key": Ed25519PrivateKey.generate(), "norm_statistics": "folded"},
    ),
}


@pytest.fixture(scope="module")
def subjects() -> dict[str, tuple]:
    """Compacted task models, their bases and save options, by case name."""
    torch.manual_seed(0)
    made = {}
    example = torch.randn(2, 4, 8, 8)
    for name, build in CASES.items():
        base, config, options = build()
        made[name] = (spa.compacted(pruned_task(base, example, config, 0.5)), base, options)
    base = mlp(in_features=12, hidden=16).eval()
    config = spa.SPLoPAConfig(block_shape=(4, 4), num_prototypes=3, prototype_rank=2)
    made["splopa"] = (trained_task(base, config, torch.randn(4, 12)), base, {})
    config = spa.BlockFinePruningConfig(block_shape=(4, 4))
    made["block-fine-pruning"] = (trained_task(base, config, torch.randn(4, 12)), base, {})
    base = llama().eval()
    model = pruned(base, units=("heads", "ffn", "hidden"), density=0.5)
    made["llama"] = (spa.compacted(model), base, {})
    return made


@pytest.mark.parametrize("given", [False, True], ids=["facts-computed", "facts-given"])
@pytest.mark.parametrize(
    "case", ["splora", "fine-pruning", "splora-signed", "splopa", "block-fine-pruning", "llama"]
)
def test_save_task_path_goes_down_the_layers_through_at_most_12_places(
    subjects, tmp_path, case, given
):
    model, base, options = subjects[case]
    if given:
        options = {**options, "facts": task_facts(model, base)}
    seen = profile_save(model, base, tmp_path / "task.safetensors", **options)
    summary = f"{len(seen.places)} places, {len(seen.functions)} functions: {sorted(seen.places)}"
    assert len(seen.places) <= MAX_PLACES, summary
    assert not seen.climbs, f"calls back up the save layers: {sorted(seen.climbs)}"
    assert not seen.strays, f"modules off the save layering: {sorted(seen.strays)}"
    assert not seen.stage_reentries, f"stages calling the writer: {seen.stage_reentries}"
    expected = {stage: 1 for stage in STAGES.items() if not (given and "facts" in stage[0])}
    assert dict(seen.stage_calls) == expected


@pytest.mark.parametrize("case", ["splora", "splopa"])
def test_every_function_on_the_save_path_is_at_most_60_lines(subjects, tmp_path, case):
    model, base, options = subjects[case]
    seen = profile_save(model, base, tmp_path / "task.safetensors", **options)
    long = {
        f"{_module(code.co_filename)}:{code.co_name}": length
        for code in seen.functions
        if (length := len(inspect.getsourcelines(code)[0])) > MAX_LINES
    }
    assert not long, f"functions over {MAX_LINES} lines: {long}"


def test_the_profile_sees_a_call_back_up_and_a_module_off_the_layering(
    subjects, tmp_path, monkeypatch
):
    from spa.adapters.density import layers_density
    from spa.codec.writer import BundleWriter
    from spa.tasks import save_layers

    add = BundleWriter.add

    def add_and_stray(self, name, tensor):  # test code: the caller seen is the kind's codec
        save_layers._is_foldable(tensor)  # kind codec -> steps: a climb
        layers_density([])  # off the layering
        add(self, name, tensor)

    monkeypatch.setattr(BundleWriter, "add", add_and_stray)
    model, base, options = subjects["splora"]
    seen = profile_save(model, base, tmp_path / "task.safetensors", **options)
    assert ("spa/adapters/splora/codec.py", "spa/tasks/save_layers.py") in seen.climbs
    assert seen.strays == {"spa/adapters/density.py"}
