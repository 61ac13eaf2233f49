"""Experiments: configs, the training loop, the resumable runner, reports and the demo.

`load_config(path, overrides)` → `ExperimentConfig` → `run(config, run_dir)` → `RunResult`;
`write_report(run_dirs, output_dir)` rebuilds tables and plots; `run_demo` is `spa demo`,
`demo_lm.run_lm_demo` is `spa demo lm`.
"""

from spa.experiments.config import (
    AdapterSection,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    PruningConfig,
    TrainConfig,
    config_to_toml,
    from_dict,
    load_config,
    to_dict,
)
from spa.experiments.report import write_report
from spa.experiments.runner import RunResult, run

__all__ = [
    "AdapterSection",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "PruningConfig",
    "RunResult",
    "TrainConfig",
    "config_to_toml",
    "from_dict",
    "load_config",
    "run",
    "to_dict",
    "write_report",
]
