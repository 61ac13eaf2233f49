"""One rank of a multi-process test: `python -m tests.distributed._worker SCENARIO OUT_DIR`.

Started with the variables `torchrun` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT), either by torchrun itself or by the test. Each rank saves its scenario result to
`OUT_DIR/rank-<r>.pt` (test-only: in spa itself only rank 0 writes files).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from spa.distributed import current_rank, distributed_session
from tests.distributed._scenarios import SCENARIOS


def main(scenario: str, out_dir: str) -> None:
    """Join the group, run the scenario and save this rank's result."""
    with distributed_session(backend="gloo"):  # final barrier only if the scenario succeeded
        result = SCENARIOS[scenario]()
        torch.save(result, Path(out_dir) / f"rank-{current_rank()}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
