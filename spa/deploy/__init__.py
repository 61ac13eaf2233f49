"""The deployment path: from a trained, masked model to the model that runs.

1. `fuse(model)`: every adapter layer becomes a plain `nn.Linear` / `nn.ConvNd` holding its
   fused weight (`spa.deploy.fuse`).
2. Compaction, physically smaller tensors:
   - channel pruning: `compact(model)` removes masked channels (heads and FFN neurons of
     described transformer families included) from the adapted model, in place, which then
     fuses; `compacted(model)` returns a compacted copy (or `model` itself when nothing is
     masked), the form `spa.save_task` takes: `save_task(compacted(model), path, base_model=b)`;
     `compacted_for_save(model, b)` is the same for saving only, holding no copy of a base
     weight (placeholders on `meta`), the form for models near the memory's size;
   - block pruning: `compact_blocks(model, example_inputs)` fuses a copy and removes the heads
     and FFN neurons whose blocks are all pruned, for every described family, with a report of
     parameters and FLOPs before and after (`spa.deploy.blocks`); `without_empty_units` does
     the removal for tasks served by `TaskHost(base, finalize=without_empty_units)`.
3. `optimize_for_inference(model)`: BatchNorm folding and channels-last (`spa.deploy.optimise`).
4. Files: task bundles (`spa.save_task`), standalone exports (`spa.tasks.export`: safetensors
   with an architecture description, ONNX) and the `transformers` format
   (`spa.save_pretrained`) live in `spa.tasks`, the only package that writes files.

Channel compaction (`compact`) and empty-unit removal (`remove_empty_units`,
`without_empty_units`) live in `spa.pruning` (`compaction.py`, `empty_units.py`) and are
re-exported here: they are the inverse of the pruning package's masks (module masks, coupled
channel groups through Torch-Pruning in `spa.pruning.groups`), `remove_empty_units` is built on
`compact`, and `spa.pruning.compact` is public API that the pruning package itself exports;
moving them here would make `spa.pruning` import `spa.deploy`, against the import direction
(`adapters` <- `pruning` <- `deploy` <- `tasks`).
"""

from spa.deploy.blocks import CompactionReport, compact_blocks
from spa.deploy.compacted import compacted, compacted_for_save, has_pruned_channels
from spa.deploy.fuse import fuse, fused_layer
from spa.deploy.optimise import fold_batchnorm, optimize_for_inference
from spa.pruning.compaction import compact
from spa.pruning.empty_units import UnitRemoval, remove_empty_units, without_empty_units

__all__ = [
    "CompactionReport",
    "UnitRemoval",
    "compact",
    "compact_blocks",
    "compacted",
    "compacted_for_save",
    "fold_batchnorm",
    "fuse",
    "fused_layer",
    "has_pruned_channels",
    "optimize_for_inference",
    "remove_empty_units",
    "without_empty_units",
]
