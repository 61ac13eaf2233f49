"""Task switching vs loading fine-pruned checkpoints: ResNet-50 (random weights), 20 tasks.

10 SPLoRA task bundles at 30% density and 10 at 10% (random channel scores, random adapters),
each also saved as the fine-pruned checkpoint of the same task (the fused, compacted model's
state dict, as `torch.save` and as safetensors). Measured side by side in one run:

- cold switch: `host.set_task` of a task not in the cache (cache_size=1, tasks alternate) plus
  the first forward pass;
- cached switch: `host.set_task` of a cached task plus a forward pass;
- checkpoint: read the fine-pruned checkpoint (`torch.load(weights_only=True)` or safetensors),
  `load_state_dict` into a prebuilt compacted model skeleton, plus a forward pass (building the
  skeleton is not timed, which favours the checkpoint);
- bytes on disk of bundles and checkpoints.

Run: `python benchmarks/bench_task_switching.py [--tasks 10] [--size 112] [--threads N]`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch

import spa
from spa.models import resnet50
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.tasks import TaskHost, load_task, save_task


def _make_tasks(base, directory: Path, densities: list[float], tasks: int, size: int) -> list:
    x = torch.randn(1, 3, size, size)
    adapted = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(adapted, (x,))
    made = []
    for density in densities:
        for index in range(tasks):
            model = copy.deepcopy(adapted)
            scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
            apply_masks(model, compute_masks(groups, scores, density))
            for _, layer in spa.adapter_layers(model):
                torch.nn.init.normal_(layer.up, std=0.01)
            name = f"d{int(density * 100)}_{index}"
            bundle = directory / f"{name}.safetensors"
            save_task(model.eval(), bundle, base_model=base)
            task_model = load_task(base, bundle)
            state = {k: v.detach().clone().contiguous() for k, v in task_model.state_dict().items()}
            torch.save(state, directory / f"{name}.pt")
            safetensors.torch.save_file(state, str(directory / f"{name}.ckpt.safetensors"))
            skeleton = copy.deepcopy(task_model)  # the compacted structure, weights overwritten
            made.append((name, density, bundle, skeleton))
            print(f"  made {name}: bundle {bundle.stat().st_size:,} B", flush=True)
    return made


def _timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10, help="tasks per density")
    parser.add_argument("--size", type=int, default=112, help="input image size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    base = resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        print(f"making {2 * args.tasks} tasks ...", flush=True)
        with torch.enable_grad():
            tasks = _make_tasks(base, directory, [0.3, 0.1], args.tasks, args.size)
        host = TaskHost(base, cache_size=1)
        for name, _, bundle, _ in tasks:
            host.add_task(name, bundle)
        results: dict[float, dict[str, list[float]]] = {}
        for round_index in range(2):
            for name, density, _, skeleton in tasks:
                row = results.setdefault(density, {})

                def cold(name=name):
                    host.set_task(name)
                    host(x)

                def cached(name=name):
                    host.set_task(name)
                    host(x)

                def checkpoint_torch(name=name, skeleton=skeleton):
                    state = torch.load(directory / f"{name}.pt", weights_only=True)
                    skeleton.load_state_dict(state)
                    skeleton(x)

                def checkpoint_safetensors(name=name, skeleton=skeleton):
                    state = safetensors.torch.load_file(str(directory / f"{name}.ckpt.safetensors"))
                    skeleton.load_state_dict(state)
                    skeleton(x)

                def forward_only(skeleton=skeleton):
                    skeleton(x)

                def cold_switch_only(name=name):
                    host.set_task(name)

                def checkpoint_only(name=name, skeleton=skeleton):
                    skeleton.load_state_dict(
                        torch.load(directory / f"{name}.pt", weights_only=True)
                    )

                row.setdefault("cold switch + forward", []).append(_timed(cold))
                row.setdefault("cached switch + forward", []).append(_timed(cached))
                row.setdefault("torch.load ckpt + forward", []).append(_timed(checkpoint_torch))
                row.setdefault("safetensors ckpt + forward", []).append(
                    _timed(checkpoint_safetensors)
                )
                row.setdefault("forward only", []).append(_timed(forward_only))
                host.set_task(tasks[0][0] if name != tasks[0][0] else tasks[1][0])  # evict
                row.setdefault("cold switch only", []).append(_timed(cold_switch_only))
                row.setdefault("torch.load ckpt only", []).append(_timed(checkpoint_only))
                if round_index == 0:
                    row.setdefault("bundle bytes", []).append(
                        (directory / f"{name}.safetensors").stat().st_size
                    )
                    row.setdefault("checkpoint bytes", []).append(
                        (directory / f"{name}.pt").stat().st_size
                    )
        print(
            f"\nResNet-50, random weights, input 1x3x{args.size}x{args.size}, "
            f"{args.tasks} tasks per density, {torch.get_num_threads()} threads, medians"
        )
        for density, row in results.items():
            median = {key: statistics.median(values) for key, values in row.items()}
            print(f"\ndensity {density:.0%}:")
            for key, value in median.items():
                unit = "B" if "bytes" in key else "ms"
                shown = f"{value:,.0f}" if unit == "B" else f"{1000 * value:.1f}"
                print(f"  {key:28s} {shown:>12s} {unit}")
            cold = median["cold switch + forward"]
            print(
                f"  ratio cold switch / torch.load checkpoint:   "
                f"{cold / median['torch.load ckpt + forward']:.2f}"
            )
            print(
                f"  ratio cold switch / safetensors checkpoint:  "
                f"{cold / median['safetensors ckpt + forward']:.2f}"
            )
            print(
                f"  ratio cold switch / torch.load (no forward): "
                f"{median['cold switch only'] / median['torch.load ckpt only']:.2f}"
            )
            print(
                f"  ratio cached switch / cold switch:           "
                f"{median['cached switch + forward'] / cold:.2f}"
            )
            print(
                f"  ratio bundle bytes / checkpoint bytes:       "
                f"{median['bundle bytes'] / median['checkpoint bytes']:.3f}"
            )


if __name__ == "__main__":
    main()
