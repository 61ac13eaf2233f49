"""Task switching vs loading fine-pruned checkpoints: ResNet-50 (random weights).

SPLoRA task bundles at 30% and at 10% parameter density (random channel scores, random
adapters), each also saved as the fine-pruned checkpoint of the same task (the fused, compacted
model's state dict, as safetensors and for `torch.load`). Timed side by side, in interleaved
rounds (`_timing.interleaved_ratios`, median of per-round ratios, min-max):

- cold switch: `host.set_task` of a task not in the host's cache (cache_size=1, the tasks of a
  density take turns), which materialises the fused, compacted task model;
- safetensors checkpoint: `safetensors.torch.load_file` + `load_state_dict` into a prebuilt
  compacted model skeleton (building the skeleton is not timed, which favours the checkpoint);
- `torch.load(weights_only=True)` checkpoint, the same way (informative);
- cached switch: `host.set_task` of a cached task, against one forward pass of the task model.

Goals (issue 15): cold switch <= 0.5x the safetensors load at each density; cached switch <=
the forward pass. Also printed: cold switch + forward vs safetensors + forward, bytes on disk.
Before timing, every host model is checked to equal `load_task` (torch.equal outputs).

Run: `python benchmarks/bench_task_switching.py [--tasks 3] [--size 112] [--rounds 9]
[--threads 1]`.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from _timing import interleaved_ratios, report_goal

import spa
from spa.deploy import compacted
from spa.models import resnet50
from spa.pruning import apply_masks, channel_groups, compute_masks
from spa.tasks import TaskHost, load_task, save_task


def _make_tasks(base, directory: Path, density: float, tasks: int, x: torch.Tensor) -> list:
    """Save `tasks` random SPLoRA tasks at `density`; return (name, bundle, skeleton) each."""
    with torch.enable_grad():
        adapted = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
        groups = channel_groups(adapted, (x,))
    made = []
    for index in range(tasks):
        model = copy.deepcopy(adapted)
        scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
        apply_masks(model, compute_masks(groups, scores, density))
        for _, layer in spa.adapter_layers(model):
            torch.nn.init.normal_(layer.up, std=0.01)
        name = f"d{round(density * 100)}_{index}"
        bundle = directory / f"{name}.safetensors"
        save_task(compacted(model.eval()), bundle, base_model=base)
        task_model = load_task(base, bundle)
        state = {k: v.detach().clone().contiguous() for k, v in task_model.state_dict().items()}
        torch.save(state, directory / f"{name}.pt")
        safetensors.torch.save_file(state, str(directory / f"{name}.ckpt.safetensors"))
        made.append((name, bundle, copy.deepcopy(task_model)))  # the skeleton, overwritten
    return made


def _check_exact(host: TaskHost, base, tasks: list, x: torch.Tensor) -> None:
    for name, bundle, _ in tasks:
        host.set_task(name)
        if not torch.equal(host(x), load_task(base, bundle)(x)):
            raise SystemExit(f"{name}: the switched model differs from load_task")


def _cycle(functions: list):
    """A callable that calls the next function of `functions` each time."""
    turn = itertools.cycle(functions)
    return lambda: next(turn)()


def _bench_density(base, directory: Path, density: float, args, x: torch.Tensor) -> None:
    tasks = _make_tasks(base, directory, density, args.tasks, x)
    # Two cold hosts, so the two cold variants never find each other's task in the cache.
    cold_host, cold_forward_host = TaskHost(base, cache_size=1), TaskHost(base, cache_size=1)
    cached_host = TaskHost(base, cache_size=len(tasks))
    for name, bundle, _ in tasks:
        for host in (cold_host, cold_forward_host, cached_host):
            host.add_task(name, bundle)
    _check_exact(cold_host, base, tasks, x)
    _check_exact(cached_host, base, tasks, x)  # every task is now cached

    def safetensors_load(name, skeleton):
        skeleton.load_state_dict(
            safetensors.torch.load_file(str(directory / f"{name}.ckpt.safetensors"))
        )

    def torch_load(name, skeleton):
        skeleton.load_state_dict(torch.load(directory / f"{name}.pt", weights_only=True))

    def with_forward(function, model_of):
        def run(name, skeleton):
            function(name, skeleton)
            model_of(name, skeleton)(x)

        return run

    def cold(name, _):
        cold_host.set_task(name)

    def cold_forward(name, _):
        cold_forward_host.set_task(name)
        cold_forward_host(x)

    def cached(name, _):
        cached_host.set_task(name)

    def forward(name, _):
        cached_host.model(name)(x)

    def skeleton_of(_, skeleton):
        return skeleton

    kinds = {
        "safetensors load": safetensors_load,
        "cold switch": cold,
        "torch.load": torch_load,
        "safetensors load + forward": with_forward(safetensors_load, skeleton_of),
        "cold switch + forward": cold_forward,
        "forward": forward,
        "cached switch": cached,
    }
    # Each call goes to the next task: with cache_size=1 every cold switch really is cold.
    variants = {
        kind: _cycle([lambda f=f, n=n, s=s: f(n, s) for n, _, s in tasks])
        for kind, f in kinds.items()
    }
    print(f"\ndensity {density:.0%} ({len(tasks)} tasks taking turns, {args.rounds} rounds):")
    groups = (  # (reference, other variants): each group timed in its own interleaved rounds
        ("safetensors load", ["cold switch", "torch.load"]),
        ("safetensors load + forward", ["cold switch + forward"]),
        ("forward", ["cached switch"]),
    )
    results = {}
    for reference, others in groups:
        timed = {kind: variants[kind] for kind in [reference, *others]}
        result = interleaved_ratios(timed, reference=reference, rounds=args.rounds)
        for kind, (seconds, ratio, low, high) in result.items():
            print(
                f"  {kind:28s} {1000 * seconds:8.3f} ms   / {reference:26s} {ratio:6.3f} "
                f"({low:.3f}-{high:.3f})"
            )
        results.update(result)
    _, ratio, low, high = results["cold switch"]
    report_goal(
        f"ResNet-50 {density:.0%}: cold switch / safetensors load",
        "<= 0.50",
        f"{ratio:.2f} ({low:.2f}-{high:.2f})",
        ratio <= 0.5,
    )
    _, ratio, low, high = results["cached switch"]
    report_goal(
        f"ResNet-50 {density:.0%}: cached switch / forward",
        "<= 1",
        f"{ratio:.4f} ({low:.4f}-{high:.4f})",
        ratio <= 1,
    )
    _, ratio, low, high = results["cold switch + forward"]
    report_goal(
        f"ResNet-50 {density:.0%}: cold switch + forward / safetensors load + forward",
        "-",
        f"{ratio:.2f} ({low:.2f}-{high:.2f})",
        None,
    )
    bundle_bytes = [bundle.stat().st_size for _, bundle, _ in tasks]
    checkpoint_bytes = [(directory / f"{name}.pt").stat().st_size for name, _, _ in tasks]
    print(
        f"  bytes on disk: bundle {sum(bundle_bytes) // len(tasks):,} B, checkpoint "
        f"{sum(checkpoint_bytes) // len(tasks):,} B "
        f"(ratio {sum(bundle_bytes) / sum(checkpoint_bytes):.3f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=3, help="tasks per density (>= 2)")
    parser.add_argument("--size", type=int, default=112, help="input image size")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (>= 9)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: stable on shared cores)"
    )
    args = parser.parse_args()
    if args.tasks < 2:
        parser.error("--tasks must be at least 2 (cold switches alternate between tasks)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    base = resnet50(num_classes=10).eval()
    x = torch.randn(1, 3, args.size, args.size)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"ResNet-50, random weights, input 1x3x{args.size}x{args.size}, "
        f"{torch.get_num_threads()} threads, 1-min load average {load:.2f}"
    )
    with tempfile.TemporaryDirectory() as scratch:
        for density in (0.3, 0.1):
            _bench_density(base, Path(scratch), density, args, x)


if __name__ == "__main__":
    main()
