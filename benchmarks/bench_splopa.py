"""SPLoPA on BERT-base: training-step time vs full fine-tuning, and fused eval vs base forward.

Run: `python benchmarks/bench_splopa.py [--rounds 9] [--threads 2]`.

BERT-base configuration with random weights (no downloads), `BertForQuestionAnswering`, batch 8,
sequence length 128, CPU. One training step is forward + loss + backward + AdamW step. The two
set-ups are timed in interleaved rounds and the median of the per-round ratios is printed with
its min-max, so machine load affects both alike. Eval compares the fused SPLoPA model (plain
`nn.Linear`s, 100% density) with the unadapted base model under `torch.no_grad()`.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _timing import interleaved_ratios, report_goal
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds (>= 9)")
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

    train = interleaved_ratios(
        {
            "fine-tuning": lambda: _train_step(finetuned, finetune_optimizer, inputs),
            "SPLoPA": lambda: _train_step(adapted, splopa_optimizer, inputs),
        },
        "fine-tuning",
        rounds=arguments.rounds,
        repeats=1,
        warmup=arguments.warmup,
    )
    seconds, ratio, low, high = train["SPLoPA"]
    report_goal(
        "SPLoPA train step / fine-tuning (BERT-base b8 s128, R64 r1 32x32)",
        "<= 0.9",
        f"{ratio:.2f} ({low:.2f}-{high:.2f})",
        ratio <= 0.9,
    )
    print(f"training step, fine-tuning : {train['fine-tuning'][0]:.3f} s (median)")
    print(f"training step, SPLoPA      : {seconds:.3f} s")
    print(
        f"ratio SPLoPA / fine-tuning : {ratio:.3f} ({low:.3f}-{high:.3f}, median of "
        f"{arguments.rounds} per-round ratios; target <= 0.9)"
    )

    eval_inputs = {k: v for k, v in inputs.items() if not k.endswith("_positions")}
    fused = fuse(adapted).eval()
    base.eval()
    evaluation = interleaved_ratios(
        {
            "base": lambda: _eval_forward(base, eval_inputs),
            "fused": lambda: _eval_forward(fused, eval_inputs),
        },
        "base",
        rounds=arguments.rounds,
        repeats=1,
        warmup=arguments.warmup,
    )
    seconds, ratio, low, high = evaluation["fused"]
    print(f"eval forward, base         : {evaluation['base'][0]:.3f} s")
    print(f"eval forward, fused SPLoPA : {seconds:.3f} s")
    print(f"ratio fused / base         : {ratio:.3f} ({low:.3f}-{high:.3f}; target ~1.0)")


if __name__ == "__main__":
    main()
