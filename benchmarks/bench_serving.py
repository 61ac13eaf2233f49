"""Serving many tasks over HTTP: `spa serve` vs one process per task vs a lock around set_task.

Three ResNet-50 tasks (random base, SPLoRA r8, 30% channel density with random scores and
adapters) behind three set-ups, each a real HTTP server on loopback:

- `spa serve`: one process, one base, all three tasks (micro-batching, `--workers` batches at
  once, default 1);
- one process per task: three `spa serve` processes with one task each (same options);
- lock around `set_task`: one process, one `TaskHost`; each request takes a lock, calls
  `host.set_task(name)` and runs the active task (what a service had to do before issue 23).

Every process gets the same allocator settings (`--arena-max`, default `spa serve`'s 2 glibc
arenas; 0: glibc's default), the lock server too.

8 concurrent clients (threads with their own `httpx.Client`) send one image per request as
safetensors, the tasks alternating request by request; every answer is compared with that
task's `load_task` model on the same image (batching changes float rounding only: rtol 1e-3,
and an answer closer to another task's reference counts as wrong). Rounds are interleaved (each
round runs every set-up once); throughput ratios are medians of per-round ratios (min-max),
latencies p50/p99 over all rounds, memory the peak RSS (VmHWM) of each set-up's processes.

Goals (issue 23): 0 wrong answers; `spa serve` throughput >= 0.9x one process per task with
<= 0.5x its memory.

Run: `python benchmarks/bench_serving.py [--quick] [--size 224] [--rounds 9] [--requests 160]
[--workers 1] [--arena-max 2]`.
"""

from __future__ import annotations

import argparse
import copy
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _timing import report_goal
from fastapi import Request, Response  # module level: the endpoints' annotations name them

NAMES = ("t0", "t1", "t2")
CLIENTS = 8
_ROOT = Path(__file__).resolve().parents[1]


def _make_tasks(directory: Path, size: int) -> tuple[Path, dict[str, Path]]:
    """A saved random ResNet-50 base and three SPLoRA bundles at 30% density."""
    import safetensors.torch

    import spa
    from spa.models import resnet50
    from spa.pruning import apply_masks, channel_groups, compute_masks

    torch.manual_seed(0)
    base = resnet50(num_classes=10).eval()
    base_path = directory / "base.safetensors"
    safetensors.torch.save_file(base.state_dict(), str(base_path))
    x = torch.randn(1, 3, size, size)
    adapted = spa.adapt(copy.deepcopy(base), spa.SPLoRAConfig(rank=8))
    groups = channel_groups(adapted, (x,))
    paths = {}
    for name in NAMES:
        model = copy.deepcopy(adapted)
        scores = {i: torch.rand(g.size) for i, g in enumerate(groups)}
        apply_masks(model, compute_masks(groups, scores, 0.3))
        for _, layer in spa.adapter_layers(model):
            torch.nn.init.normal_(layer.up, std=0.01)
        paths[name] = directory / f"{name}.safetensors"
        spa.save_task(
            spa.compacted(model.eval()),
            paths[name],
            base_model=base,
            model_name="resnet50",
            model_options={"num_classes": 10},
        )
    return base_path, paths


def _references(base_path: Path, paths: dict[str, Path], images: torch.Tensor) -> dict:
    """Each task's `load_task` outputs on every image, one image at a time."""
    import safetensors.torch

    from spa.models import resnet50
    from spa.tasks import load_task

    base = resnet50(num_classes=10)
    base.load_state_dict(safetensors.torch.load_file(str(base_path)))
    outputs = {}
    with torch.no_grad():
        for name, path in paths.items():
            model = load_task(base.eval(), path)
            outputs[name] = [model(image[None]) for image in images]
    return outputs


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _spawn(arguments: list[str], threads: int) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    environment = {**os.environ, "PYTHONPATH": str(_ROOT), "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [sys.executable, *arguments, "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, port


def _wait_healthy(process: subprocess.Popen, port: int) -> None:
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a server exited: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("a server did not start within 600 s")


def _serve_arguments(
    base: Path, paths: dict[str, Path], size: int, names, workers: int
) -> list[str]:
    arguments = ["-m", "spa", "serve", "--base", str(base), "--input-shape", f"3,{size},{size}"]
    for name in names:
        arguments += ["--task", f"{name}={paths[name]}"]
    return arguments + ["--max-batch", "8", "--max-wait-ms", "2", "--workers", str(workers)]


def _allocator_arguments(arena_max: int) -> list[str]:
    return ["--malloc-arena-max", str(arena_max)]


def _peak_rss(pid: int) -> int:
    """Peak resident memory of process `pid` in bytes (Linux: VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _load(routes: dict[str, str], images: torch.Tensor, references: dict, requests: int):
    """CLIENTS threads sending `requests` in all; (seconds, latencies, wrong answers)."""
    import httpx
    from safetensors.torch import load, save

    bodies = [save({"inputs": image[None].contiguous()}) for image in images]
    latencies, wrong, lock = [], [0], threading.Lock()
    per_client = requests // CLIENTS

    def client(offset: int) -> None:
        mine = []
        with httpx.Client(timeout=600) as session:
            for step in range(per_client):
                name = NAMES[(offset + step) % len(NAMES)]
                index = (offset * per_client + step) % len(bodies)
                start = time.perf_counter()
                response = session.post(
                    routes[name].format(name=name),
                    content=bodies[index],
                    headers={"Content-Type": "application/x-safetensors"},
                )
                mine.append(time.perf_counter() - start)
                ok = response.status_code == 200 and _is_right(
                    load(response.content)["outputs"], name, index, references
                )
                if not ok:
                    with lock:
                        wrong[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, wrong[0]


def _is_right(outputs: torch.Tensor, name: str, index: int, references: dict) -> bool:
    own = references[name][index]
    if outputs.shape != own.shape or not torch.allclose(outputs, own, rtol=1e-3, atol=1e-4):
        return False
    distance = (outputs - own).abs().max()
    return all(distance < (outputs - references[o][index]).abs().max() for o in NAMES if o != name)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def serve_with_lock(arguments: list[str]) -> None:
    """The baseline server: one TaskHost, a lock around `set_task` + call (no batching)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-lock", action="store_true")
    parser.add_argument("--base")
    parser.add_argument("--task", action="append")
    parser.add_argument("--port", type=int)
    parser.add_argument("--malloc-arena-max", type=int, default=2)
    args = parser.parse_args(arguments)
    import safetensors.torch
    import uvicorn
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool

    from spa.models import resnet50
    from spa.serve.memory import AllocatorSettings, configure_allocator
    from spa.tasks import TaskHost

    configure_allocator(AllocatorSettings(arena_max=args.malloc_arena_max or None))  # as spa serve
    base = resnet50(num_classes=10)
    base.load_state_dict(safetensors.torch.load_file(args.base))
    host = TaskHost(base.eval(), cache_size=len(args.task))
    for item in args.task:
        name, _, path = item.partition("=")
        host.add_task(name, path)
    lock, app = threading.Lock(), FastAPI()

    def run(name: str, inputs: torch.Tensor) -> torch.Tensor:
        with lock:
            host.set_task(name)
            return host(inputs)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.post("/v1/tasks/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        inputs = safetensors.torch.load(await request.body())["inputs"]
        outputs = await run_in_threadpool(run, name, inputs)
        return Response(safetensors.torch.save({"outputs": outputs}))

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 px, 3 rounds, 48 requests")
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=160, help="requests per set-up per round")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    parser.add_argument("--workers", type=int, default=2, help="spa serve --workers, every set-up")
    parser.add_argument(
        "--arena-max", type=int, default=2, help="spa serve --malloc-arena-max, every set-up"
    )
    args = parser.parse_args()
    if args.quick:
        args.size, args.rounds, args.requests = 64, 3, 48
    args.load = os.getloadavg()
    torch.set_num_threads(args.threads)
    threads = args.threads
    with tempfile.TemporaryDirectory() as folder:
        base, paths = _make_tasks(Path(folder), args.size)
        images = torch.randn(16, 3, args.size, args.size)
        references = _references(base, paths, images)

        def serve(names) -> tuple[subprocess.Popen, int]:
            arguments = _serve_arguments(base, paths, args.size, names, args.workers)
            return _spawn(arguments + _allocator_arguments(args.arena_max), threads)

        setups = {
            "spa serve": [serve(NAMES)],
            "one process per task": [serve([n]) for n in NAMES],
            "lock around set_task": [
                _spawn(
                    [__file__, "--serve-lock", "--base", str(base)]
                    + [f"--task={n}={paths[n]}" for n in NAMES]
                    + _allocator_arguments(args.arena_max),
                    threads,
                )
            ],
        }
        try:
            _run(setups, images, references, args)
        finally:
            for processes in setups.values():
                for process, _ in processes:
                    process.send_signal(signal.SIGTERM)
                    process.wait(timeout=60)


def _run(setups: dict, images: torch.Tensor, references: dict, args) -> None:
    for processes in setups.values():
        for process, port in processes:
            _wait_healthy(process, port)
    routes = {
        setup: {
            name: f"http://127.0.0.1:{processes[NAMES.index(name) if len(processes) > 1 else 0][1]}"
            "/v1/tasks/{name}/predict"
            for name in NAMES
        }
        for setup, processes in setups.items()
    }
    for setup in setups:  # warm-up: every task model built and run once
        _load(routes[setup], images, references, len(NAMES) * CLIENTS)
    seconds = {setup: [] for setup in setups}
    latencies = {setup: [] for setup in setups}
    wrong = dict.fromkeys(setups, 0)
    for _ in range(args.rounds):
        for setup in setups:
            elapsed, times, bad = _load(routes[setup], images, references, args.requests)
            seconds[setup].append(elapsed)
            latencies[setup].extend(times)
            wrong[setup] += bad
    memory = {s: sum(_peak_rss(p.pid) for p, _ in processes) for s, processes in setups.items()}
    _print(setups, seconds, latencies, wrong, memory, args)


def _print(setups, seconds, latencies, wrong, memory, args) -> None:
    reference = "one process per task"
    print(
        f"ResNet-50, 3 tasks at 30% density, {args.size} px, {CLIENTS} clients, {args.rounds} "
        f"rounds x {args.requests} requests, {args.threads} torch threads per process, "
        f"--workers {args.workers}, --malloc-arena-max {args.arena_max}; load average at the "
        f"start {args.load[0]:.1f}, at the end {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'set-up':24} {'req/s':>7} {'vs 1/task':>18} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'peak RSS MiB':>13} {'wrong':>6}"
    )
    ratios = {}
    for setup in setups:
        rates = [args.requests / s for s in seconds[setup]]
        per_round = [r / (args.requests / s) for r, s in zip(rates, seconds[reference])]
        ratios[setup] = (statistics.median(per_round), min(per_round), max(per_round))
        print(
            f"{setup:24} {statistics.median(rates):7.1f} "
            f"{ratios[setup][0]:6.2f} ({ratios[setup][1]:.2f}-{ratios[setup][2]:.2f}) "
            f"{1000 * _percentile(latencies[setup], 0.5):8.1f} "
            f"{1000 * _percentile(latencies[setup], 0.99):8.1f} "
            f"{memory[setup] / 2**20:13.0f} {wrong[setup]:6d}"
        )
    total_wrong = sum(wrong.values())
    report_goal("serving: wrong answers (all set-ups)", "0", str(total_wrong), total_wrong == 0)
    median, low, high = ratios["spa serve"]
    report_goal(
        "spa serve throughput / one process per task",
        ">= 0.9",
        f"{median:.2f} ({low:.2f}-{high:.2f})",
        median >= 0.9,
    )
    share = memory["spa serve"] / memory[reference]
    report_goal(
        "spa serve peak memory / one process per task", "<= 0.5", f"{share:.2f}", share <= 0.5
    )
    median, low, high = ratios["lock around set_task"]
    report_goal(
        "lock around set_task throughput / one process per task",
        "-",
        f"{median:.2f} ({low:.2f}-{high:.2f})",
        None,
    )


if __name__ == "__main__":
    if "--serve-lock" in sys.argv:
        serve_with_lock(sys.argv[1:])
    else:
        main()
