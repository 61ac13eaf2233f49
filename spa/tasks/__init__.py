"""Task bundles and task switching (DESIGN §4): tiny per-task files over one shared base.

`save_task` writes what a task changed relative to its base model (adapter factors or
fine-pruned weights of kept channels/blocks, bit-packed masks, norms, head) into one safetensors
file with JSON metadata and a base fingerprint; `load_task` rebuilds the fused, compacted task
model from the shared base weights after validating every field and tensor against the base;
`TaskHost` serves many tasks over one base; `save_pretrained` writes a pruned `transformers`
model as a directory plain `transformers` loads; `prune_shards` prunes a sharded `transformers`
checkpoint block by block (`spa.tasks.streaming`). Bundles can be signed with Ed25519 keys
(`spa.tasks.signing`; `save_task(signing_key=...)`, `load_task(trusted_keys=...)`).
"""

from spa.tasks.export import export_model, export_onnx, load_exported
from spa.tasks.fingerprint import describe_architecture, fingerprint
from spa.tasks.format import FORMAT_VERSION, Bundle, read_bundle
from spa.tasks.host import TaskHost, TaskReport
from spa.tasks.load import build_task, load_task, plan_task
from spa.tasks.model_cache import TaskStats
from spa.tasks.pretrained import save_pretrained
from spa.tasks.save import save_task
from spa.tasks.streaming import StreamReport, prune_shards

__all__ = [
    "FORMAT_VERSION",
    "Bundle",
    "TaskHost",
    "TaskReport",
    "TaskStats",
    "build_task",
    "describe_architecture",
    "export_model",
    "export_onnx",
    "fingerprint",
    "load_exported",
    "load_task",
    "plan_task",
    "read_bundle",
    "save_pretrained",
    "save_task",
    "StreamReport",
    "prune_shards",
]
