"""`spa demo`, `spa run CONFIG` and `spa report RUN_DIR ...`: argparse only, no logic of its own."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

_RESUME_HINT = "interrupted: run the same command again to resume from the last completed step"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `demo`, `run` and `report` sub-commands.

    Args:
        subparsers: the `spa` parser's sub-parsers.
    """
    demo = subparsers.add_parser(
        "demo",
        help="transfer-prune a small ResNet to digit tasks, or a tiny LM, on the CPU (no "
        "downloads)",
        description="digits (default): train a small ResNet on scikit-learn's digits, "
        "transfer-prune it to target tasks with fine-pruning and SPLoRA, and write a table, "
        "plots and task bundles. lm: train a tiny Llama-style language model on the Python "
        "documentation that ships with CPython (byte tokens), prune its attention heads and "
        "FFN neurons with SPLoRA and fine-pruning, and print the perplexity per density.",
    )
    demo.add_argument(
        "kind",
        nargs="?",
        choices=("digits", "lm"),
        default="digits",
        help="which demo: digits (image classification, default) or lm (language model)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="short smoke run of the whole pipeline (about 30 s of CPU time)",
    )
    demo.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="distil from the unpruned model during recovery with this KL weight in [0, 1] "
        "(default 0: off)",
    )
    demo.add_argument(
        "--output",
        type=Path,
        default=None,
        help="output directory (default: spa-demo-output, or spa-demo-lm-output for lm)",
    )
    demo.set_defaults(func=_demo)

    run = subparsers.add_parser(
        "run",
        help="run (or resume) one experiment from a TOML config",
        description="Run one experiment from a TOML config; running the same command again "
        "resumes an interrupted run.",
    )
    run.add_argument("config", type=Path, help="the TOML config file")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.1 (repeatable)",
    )
    run.add_argument(
        "--output", type=Path, default=None, help="run directory (default: output_dir)"
    )
    run.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import a module that registers adapter kinds, criteria or task types before the "
        "config is read, e.g. --import my_package.kinds (repeatable)",
    )
    run.set_defaults(func=_run)

    report = subparsers.add_parser(
        "report",
        help="rebuild tables and plots from finished runs, comparing them",
        description="Rebuild table.md, table.csv and plots from one or more run directories.",
    )
    report.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    report.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write (default: the single RUN_DIR, or ./spa-report for several)",
    )
    report.set_defaults(func=_report)


def _demo(args: argparse.Namespace) -> int:
    if args.kind == "lm":
        from spa.experiments.demo_lm import run_lm_demo as run_demo

        output = args.output or Path("spa-demo-lm-output")
    else:
        from spa.experiments.demo import run_demo

        output = args.output or Path("spa-demo-output")
    try:
        result = run_demo(output, quick=args.quick, distill=args.distill)
    except KeyboardInterrupt:
        print(_RESUME_HINT, file=sys.stderr)
        return 130
    print(result.summary())
    return 0


def _run(args: argparse.Namespace) -> int:
    from spa.experiments.config import load_config
    from spa.experiments.runner import run

    _import_extensions(args.imports)
    config = load_config(args.config, args.overrides)
    try:
        result = run(config, args.output)
    except KeyboardInterrupt:
        print(_RESUME_HINT, file=sys.stderr)
        return 130
    from spa.distributed import launch_environment

    launch = launch_environment()  # the process group is closed by now; torchrun's env is not
    if launch is not None and launch["rank"] != 0:
        return 0  # under torchrun only rank 0 reports
    print(result.report.markdown.read_text(encoding="utf-8"))
    print(f"run directory: {result.run_dir}")
    print(f"  table: {result.report.markdown}, {result.report.csv}")
    print(f"  plots: {', '.join(str(p) for p in result.report.plots)}")
    return 0


def _import_extensions(names: list[str]) -> None:
    from spa.errors import ConfigError

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise ConfigError(f"--import {name}: cannot import it ({error})") from None


def _report(args: argparse.Namespace) -> int:
    from spa.experiments.report import write_report

    output = args.output
    if output is None:
        output = args.run_dirs[0] if len(args.run_dirs) == 1 else Path("spa-report")
    files = write_report(args.run_dirs, output)
    print(files.markdown.read_text(encoding="utf-8"))
    print(f"wrote {files.markdown}, {files.csv} and {len(files.plots)} plots in {output}")
    return 0
