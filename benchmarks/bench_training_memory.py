"""Peak memory of one SPLoRA training step next to one full fine-tuning step (issue 22 item 2).

A Llama-shaped causal LM of about 125M parameters (hidden 768, 12 layers, 12 heads, 4 key/value
heads, FFN 2048, vocabulary 32000, float32, random weights from the config class), one step of
AdamW on 4 x 128 tokens: forward, backward, optimizer step. "fine-tuning" trains every weight;
"SPLoRA" adapts every projection with rank 8 (`spa.task_model`, so the base weights are frozen
and shared) and trains the adapters and norms. Each step runs in its own process (a fresh
allocator), rounds interleave the two methods, and each process reports its peak resident set
(Linux `VmHWM`, the interpreter and libraries included) and the peak of the step alone above
the resident set before it. Goal: SPLoRA's peak at or below fine-tuning's.

Run: `python benchmarks/bench_training_memory.py [--rounds 9] [--quick]` (`--quick`: 2 layers,
hidden 256, vocabulary 4000, 3 rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _timing import proc_status, report_goal

SHAPE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "num_key_value_heads": 4,
    "intermediate_size": 2048,
    "vocab_size": 32000,
}
QUICK = {**SHAPE, "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4}
QUICK.update(intermediate_size=704, vocab_size=4000)
METHODS = ("fine-tuning", "splora")
_GIB = 2**30


def _one_step(method: str, sizes: dict) -> dict:
    """Build the model, run one training step; return peak RSS figures in bytes."""
    import torch
    import transformers

    import spa

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = transformers.LlamaConfig(**sizes, tie_word_embeddings=False)
    base = transformers.LlamaForCausalLM(config)
    if method == "splora":
        model = spa.task_model(base, spa.SPLoRAConfig(rank=8, trainable=("norm",)))
    else:
        model = base
    model.train()
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trained, lr=1e-4)
    ids = torch.randint(0, sizes["vocab_size"], (4, 129))
    weights = sum(p.numel() * p.element_size() for p in base.parameters())
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    before = proc_status("VmRSS")
    loss = model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "peak": proc_status("VmHWM"),
        "step": proc_status("VmHWM") - before,
        "weights": weights,
        "trained": sum(p.numel() for p in trained),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 9, quick 3)")
    parser.add_argument("--quick", action="store_true", help="a small model, for a quick check")
    parser.add_argument("--child", choices=METHODS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = QUICK if args.quick else SHAPE
    if args.child:
        print(json.dumps(_one_step(args.child, sizes)))
        return
    rounds = args.rounds or (3 if args.quick else 9)
    print(f"load average {os.getloadavg()}; {rounds} rounds; {sizes}")
    found: dict[str, list[dict]] = {method: [] for method in METHODS}
    command = [sys.executable, __file__, *(["--quick"] if args.quick else [])]
    for _ in range(rounds):
        for method in METHODS:
            output = subprocess.run(
                [*command, "--child", method], check=True, capture_output=True, text=True
            ).stdout
            found[method].append(json.loads(output.strip().splitlines()[-1]))
    weights = found["splora"][0]["weights"]
    print(f"weights: {weights / _GIB:.2f} GiB (float32)")
    for method in METHODS:
        peaks = [r["peak"] / _GIB for r in found[method]]
        steps = [r["step"] / _GIB for r in found[method]]
        print(
            f"{method:<12} trained {found[method][0]['trained']:>12,}   peak RSS "
            f"{statistics.median(peaks):.2f} GiB ({min(peaks):.2f}-{max(peaks):.2f}), the step "
            f"{statistics.median(steps):.2f} GiB above the model"
        )
    ratios = [s["peak"] / f["peak"] for s, f in zip(found["splora"], found["fine-tuning"])]
    median = statistics.median(ratios)
    report_goal(
        "training step: SPLoRA peak RSS / fine-tuning peak RSS",
        "<= 1.0",
        f"{median:.2f} ({min(ratios):.2f}-{max(ratios):.2f})",
        median <= 1.0,
    )


if __name__ == "__main__":
    main()
