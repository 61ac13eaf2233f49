"""SPLoPA on BERT-base: training-step time vs full fine-tuning, and fused eval vs base forward.

Run: `python benchmarks/bench_splopa.py [--steps 5] [--threads 2]`.

BERT-base configuration with random weights (no downloads), `BertForQuestionAnswering`, batch 8,
sequence length 128, CPU. One training step is forward + loss + backward + AdamW step. The two
set-ups are timed alternately in one run, and the ratio of their medians is printed, so machine
load affects both alike. Eval compares the fused SPLoPA model (plain `nn.Linear`s, 100% density)
with the unadapted base model under `torch.no_grad()`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from transformers import BertConfig, BertForQuestionAnswering

from spa import SPLoPAConfig, adapt, fuse

PROJECTIONS = r"encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|intermediate\.dense|output\.dense)$"  # noqa: E501


def _batch(config: BertConfig, batch: int, length: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "input_ids": torch.randint(0, config.vocab_size, (batch, length), generator=generator),
        "attention_mask": torch.ones(batch, length, dtype=torch.long),
        "token_type_ids": torch.zeros(batch, length, dtype=torch.long),
        "start_positions": torch.randint(0, length, (batch,), generator=generator),
        "end_positions": torch.randint(0, length, (batch,), generator=generator),
    }


def _train_step(model, optimizer, inputs) -> float:
    start = time.perf_counter()
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def _eval_forward(model, inputs) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    return time.perf_counter() - start


def _alternate(first, second, repeats: int, warmup: int) -> tuple[list[float], list[float]]:
    times_first, times_second = [], []
    for index in range(warmup + repeats):
        a, b = first(), second()
        if index >= warmup:
            times_first.append(a)
            times_second.append(b)
    return times_first, times_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per set-up")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per set-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(0)

    config = BertConfig()  # BERT-base: 12 layers, hidden 768, 12 heads, intermediate 3072
    base = BertForQuestionAnswering(config)
    inputs = _batch(config, arguments.batch, arguments.length)

    finetuned = copy.deepcopy(base).train()
    finetune_optimizer = torch.optim.AdamW(finetuned.parameters(), lr=1e-5)
    adapted = adapt(
        copy.deepcopy(base),
        SPLoPAConfig(
            block_shape=(32, 32), num_prototypes=64, prototype_rank=1, target_modules=PROJECTIONS
        ),
    ).train()
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    splopa_optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    print(f"adapted projections: {len(adapted.spa_report.adapted)}")

    finetune, splopa = _alternate(
        lambda: _train_step(finetuned, finetune_optimizer, inputs),
        lambda: _train_step(adapted, splopa_optimizer, inputs),
        arguments.steps,
        arguments.warmup,
    )
    finetune_median, splopa_median = statistics.median(finetune), statistics.median(splopa)
    print(f"training step, fine-tuning : {finetune_median:.3f} s (median of {len(finetune)})")
    print(f"training step, SPLoPA      : {splopa_median:.3f} s")
    print(f"ratio SPLoPA / fine-tuning : {splopa_median / finetune_median:.3f}  (target <= 0.9)")

    eval_inputs = {k: v for k, v in inputs.items() if not k.endswith("_positions")}
    fused = fuse(adapted).eval()
    base.eval()
    base_times, fused_times = _alternate(
        lambda: _eval_forward(base, eval_inputs),
        lambda: _eval_forward(fused, eval_inputs),
        arguments.steps,
        arguments.warmup,
    )
    base_median, fused_median = statistics.median(base_times), statistics.median(fused_times)
    print(f"eval forward, base         : {base_median:.3f} s")
    print(f"eval forward, fused SPLoPA : {fused_median:.3f} s")
    print(f"ratio fused / base         : {fused_median / base_median:.3f}  (target ~1.0)")


if __name__ == "__main__":
    main()
