"""`spa bundle info|verify|keygen|sign` and `spa export`: inspect, check, sign and export bundles.

Signing: `spa bundle keygen KEY` writes an Ed25519 private key (PEM, mode 0600) and `KEY.pub`;
`spa bundle sign BUNDLE --key KEY` signs a bundle; `spa bundle verify BUNDLE --trusted-key
KEY.pub` refuses a bundle that is unsigned or not signed by a trusted key (with `--base`, it also
checks the bundle against the base model).

Export: `spa export BUNDLE --base ... -o OUT` writes the task model as one safetensors file
(`--format safetensors`, read back with `spa.tasks.load_exported`), as ONNX (`--format onnx`), or,
for a `transformers` base directory, as a `transformers` model directory that `from_pretrained`
loads without spa (`--format transformers`, see `spa.tasks.save_pretrained`).

Base models are given as `--base PATH`: either a state-dict file (`.safetensors`, or `.pt` /
`.pth` read with `torch.load(weights_only=True)`) together with `--model NAME` (a `spa.models`
registry name), `--num-classes N` and any other builder argument as `--model-arg KEY=VALUE`
(VALUE parsed as JSON, else kept as a string); or a local `transformers` model directory (with
`config.json`), loaded with `from_pretrained` without any download.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spa.cli.outputs import check_output
from spa.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a command needs it: `spa --help` stays fast
    import torch
    from torch import nn


def _model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    for item in args.model_arg or []:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise ConfigError(f"--model-arg expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def load_base(
    args: argparse.Namespace, metadata: dict[str, Any] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build and load the base model named by `--base` (and `--model`); return it and its
    architecture description (see `spa.tasks.export.build_architecture`).

    Without `--model`, the `spa.models` name and builder arguments recorded in the bundle's
    `metadata` are used; `--num-classes` / `--model-arg` override recorded arguments.

    Raises:
        ConfigError: if the checkpoint or model name is missing or does not fit.
    """
    from spa.models.loading import load_model

    path = Path(args.base)
    if path.is_dir():
        from spa.tasks.export import describe_transformers

        model = load_model(path).model
        return model.eval(), describe_transformers(model)
    recorded = metadata or {}
    name = args.model or recorded.get("model_name")
    if not name:
        raise ConfigError(
            f"--base {path}: a state-dict file needs --model NAME (a spa.models registry name); "
            "the bundle does not record one"
        )
    from spa.models import create_model
    from spa.models.loading import load_torchvision_weights

    # The recorded builder arguments belong to the recorded model name: `--model` naming the same
    # architecture keeps them, another name starts from that builder's defaults.
    same_model = name == recorded.get("model_name")
    kwargs = dict(recorded.get("model_options") or {}) if same_model else {}
    kwargs.update(_model_kwargs(args))
    _check_builder_arguments(name, kwargs)
    model = create_model(name, **kwargs)
    report = load_torchvision_weights(model, path, skip_head=True, head_name=_head_name(model))
    if report.skipped:
        first = next(iter(report.skipped.values()))
        raise ConfigError(
            f"{first}: the base file's task head does not fit --num-classes "
            f"{kwargs.get('num_classes')}; give the base's own number of classes (or leave "
            "--num-classes out to use the one recorded in the bundle)"
        )
    architecture = {"source": "spa.models", "name": name, "kwargs": kwargs}
    return model.eval(), architecture


def _head_name(model: nn.Module) -> str:
    """The module path of the model's last `nn.Linear` (its task head), or "fc"."""
    from torch import nn

    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else "fc"


def _check_builder_arguments(name: str, kwargs: dict[str, Any]) -> None:
    """Refuse builder arguments that `spa.models` builder `name` does not take, listing its own.

    Raises:
        ConfigError: naming the unknown argument and the builder's valid arguments.
    """
    import inspect

    from spa.models import MODELS

    parameters = inspect.signature(MODELS.get(name)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ConfigError(
            f"model {name!r} has no builder argument {unknown[0]!r} (from --model-arg or the "
            f"bundle); valid arguments: {', '.join(parameters)}"
        )


def _add_base_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "--base",
        required=required,
        help="base checkpoint: state-dict file (.safetensors/.pt; architecture from --model or "
        "the bundle) or a local transformers model directory",
    )
    parser.add_argument(
        "--model",
        help="spa.models registry name of the base architecture (default: the name and builder "
        "arguments recorded in the bundle)",
    )
    parser.add_argument("--num-classes", type=int, help="num_classes of the model builder")
    parser.add_argument(
        "--model-arg",
        action="append",
        metavar="KEY=VALUE",
        help="further model builder argument (VALUE as JSON), repeatable",
    )


def _info(args: argparse.Namespace) -> int:
    from spa.tasks import read_bundle
    from spa.tasks.schema import check_document

    bundle = read_bundle(args.path)
    check_document(bundle)  # every printed field has its type (a hostile file may say null)
    metadata = bundle.metadata
    if args.json:
        print(json.dumps({**metadata, "bytes_on_disk": bundle.size_bytes}, indent=2))
        return 0
    adapter = metadata.get("adapter") or {}
    stored = sum(t.numel() * t.element_size() for t in bundle.tensors.values())
    lines = [
        f"bundle:          {args.path}",
        f"format version:  {metadata['format_version']} (spa {metadata.get('spa_version')})",
        f"architecture:    {metadata.get('architecture')} (model {metadata.get('model_name')}"
        f" {json.dumps(metadata.get('model_options'))})",
        f"base:            {metadata.get('base_fingerprint')}",
        f"adapter:         {adapter.get('type')} {json.dumps(adapter.get('config'))}",
        f"density:         {metadata['density']:.4f}",
        f"dParams:         {metadata['dparams']:,} {json.dumps(metadata.get('dparams_by_kind'))}",
        f"storage dtype:   {metadata.get('dtype')} (norm statistics {metadata['norm_statistics']})",
        f"bytes on disk:   {bundle.size_bytes:,} (tensors {stored:,}, header "
        f"{bundle.size_bytes - stored:,}; 4 x dParams = {4 * metadata['dparams']:,})",
        f"adapted layers:  {len(metadata.get('layers', []))}",
        "signed by:       "
        + (
            f"{bundle.signature['key_id']} for task {bundle.signature.get('task')!r} (not "
            "checked; use verify --trusted-key)"
            if bundle.signature
            else "unsigned"
        ),
    ]
    for entry in metadata.get("layers", []):
        lines.append(
            f"  {entry['path']}: {entry.get('kind', 'splora')} {tuple(entry['shape'])} of base "
            f"{tuple(entry['base_shape'])}"
        )
    lines.append(f"other changed modules: {len(metadata.get('modules', []))}")
    print("\n".join(lines))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from spa.tasks import fingerprint, plan_task, read_bundle
    from spa.tasks.format import task_name_of
    from spa.tasks.signing import trusted_key_set, verify_bundle

    if not args.base and not args.trusted_key:
        raise ConfigError("spa bundle verify needs --base, --trusted-key, or both")
    check, task = None, args.task or task_name_of(args.path)
    if args.trusted_key:  # checked from the header, before the file's body is read
        trusted = trusted_key_set(args.trusted_key)
        check = functools.partial(verify_bundle, trusted=trusted, task=task)
    bundle = read_bundle(args.path, check=check)
    if args.trusted_key:
        signer = verify_bundle(bundle, trusted, task=task)
        print(f"OK: {args.path} is signed by trusted key {signer} for task {task!r}")
    if args.base:
        base, _ = load_base(args, bundle.metadata)
        base_fingerprint = fingerprint(base)
        plan_task(base, bundle, base_fingerprint=base_fingerprint)
        print(f"OK: {args.path} fits base {args.base} ({base_fingerprint})")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from spa.tasks.signing import generate_private_key, key_id, write_key_pair

    key = generate_private_key()
    public_path = write_key_pair(key, args.path, overwrite=args.force)
    print(f"wrote private key {args.path} (keep it secret) and public key {public_path}")
    print(f"key id: {key_id(key.public_key())}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from spa.tasks import read_bundle
    from spa.tasks.format import write_bundle
    from spa.tasks.signing import signer

    sign = signer(args.key)
    if args.output is not None:
        inputs = {"bundle": args.path, "private key": args.key}
        check_output(args.output, inputs, overwrite=args.overwrite)
    bundle = read_bundle(args.path)
    output = args.output or args.path
    write_bundle(output, bundle, sign=sign, task=args.task)
    signature = bundle.signature
    print(f"signed {output} with key {signature['key_id']} for task {signature['task']!r}")
    return 0


def _input_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--input-shape must be comma-separated integers, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise ConfigError(f"--input-shape must be positive integers, got {text!r}")
    return shape


def _image_example(task: nn.Module, text: str | None) -> torch.Tensor:
    """An example image batch for ONNX tracing: `--input-shape`, or one from the model itself.

    Without `--input-shape` the channels come from the model's first convolution (so from the
    builder arguments recorded in the bundle) and the image is 32 x 32.

    Raises:
        ConfigError: if the model cannot run on the shape, naming the shape and its input channels.
    """
    import torch
    from torch import nn

    convs = [m for m in task.modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)]
    channels = convs[0].in_channels if convs else None
    if text:
        shape = _input_shape(text)
    elif convs:
        shape = (1, channels) + (32,) * (convs[0].weight.dim() - 2)
    else:
        raise ConfigError("--format onnx needs --input-shape for a model without convolutions")
    example = torch.randn(shape)
    try:
        with torch.no_grad():
            task.eval()(example)
    except (RuntimeError, ValueError, IndexError) as error:
        expected = f"; the model takes {channels} input channels, e.g. " if channels else ""
        if channels:
            expected += ",".join(map(str, (1, channels) + (32,) * (convs[0].weight.dim() - 2)))
        first_line = str(error).strip().splitlines()[0]
        raise ConfigError(
            f"--input-shape {','.join(map(str, shape))} does not fit the task model "
            f"({first_line}){expected}"
        ) from None
    return example


def _export(args: argparse.Namespace) -> int:
    import torch

    from spa.tasks import load_task, read_bundle
    from spa.tasks.export import export_model, export_onnx

    inputs = {"bundle": args.bundle, "base": args.base}
    directory = args.format == "transformers"
    check_output(args.output, inputs, overwrite=args.overwrite, directory=directory)
    base, architecture = load_base(args, read_bundle(args.bundle).metadata)
    if args.format == "transformers" and architecture["source"] != "transformers":
        raise ConfigError(
            f"--format transformers needs --base to be a local transformers model directory "
            f"(with config.json), got {args.base}"
        )
    finalize = None
    if args.remove_empty_units:
        from spa.deploy import without_empty_units

        finalize = without_empty_units
    task = load_task(base, args.bundle, finalize=finalize)
    if args.format == "transformers":
        from spa.tasks.pretrained import save_pretrained

        output = save_pretrained(task, args.output, overwrite=args.overwrite)
        size = sum(path.stat().st_size for path in output.rglob("*") if path.is_file())
        print(f"wrote {output} ({size:,} bytes, transformers directory)")
        return 0
    if args.format == "onnx":
        if architecture["source"] == "transformers":
            example = (torch.ones(_input_shape(args.input_shape or "1,128"), dtype=torch.long),)
        else:
            example = (_image_example(task, args.input_shape),)
        export_onnx(task, args.output, example)
    else:
        export_model(task, args.output, architecture=architecture, reference=base)
    print(f"wrote {args.output} ({Path(args.output).stat().st_size:,} bytes, {args.format})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `spa bundle info|verify|keygen|sign` and `spa export` to the `spa` command line."""
    bundle = subparsers.add_parser("bundle", help="inspect and check task bundles")
    actions = bundle.add_subparsers(dest="bundle_command", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="print a bundle's metadata and sizes")
    info.add_argument("path", help="bundle file")
    info.add_argument("--json", action="store_true", help="print the raw metadata as JSON")
    info.set_defaults(func=_info)
    verify = actions.add_parser(
        "verify", help="check a bundle's signature and/or check it against a base checkpoint"
    )
    verify.add_argument("path", help="bundle file")
    _add_base_arguments(verify, required=False)
    verify.add_argument(
        "--trusted-key",
        action="append",
        metavar="PUBLIC_KEY",
        help="PEM public key (from keygen) the bundle must be signed by; repeatable",
    )
    verify.add_argument(
        "--task",
        help="task name the signature must name (default: the file name without .safetensors)",
    )
    verify.set_defaults(func=_verify)
    keygen = actions.add_parser("keygen", help="create an Ed25519 signing key pair (PEM)")
    keygen.add_argument("path", help="private key file to write; the public key goes to PATH.pub")
    keygen.add_argument(
        "--force", action="store_true", help="replace existing key files (PATH and PATH.pub)"
    )
    keygen.set_defaults(func=_keygen)
    sign = actions.add_parser("sign", help="sign a bundle with a private key (from keygen)")
    sign.add_argument("path", help="bundle file")
    sign.add_argument("--key", required=True, help="PEM private key file")
    sign.add_argument("-o", "--output", help="signed bundle file (default: sign in place)")
    sign.add_argument(
        "--overwrite", action="store_true", help="replace an existing -o file (never the input)"
    )
    sign.add_argument(
        "--task",
        help="task name the signature binds (default: the output file name without .safetensors)",
    )
    sign.set_defaults(func=_sign)
    export = subparsers.add_parser(
        "export",
        help="write the fused, compacted task model (safetensors, ONNX or a transformers "
        "directory)",
    )
    export.add_argument("bundle", help="bundle file")
    _add_base_arguments(export)
    export.add_argument(
        "-o", "--output", required=True, help="output file (a directory for --format transformers)"
    )
    export.add_argument(
        "--format", choices=("safetensors", "onnx", "transformers"), default="safetensors"
    )
    export.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing output file or non-empty directory (never the bundle or the "
        "base)",
    )
    export.add_argument(
        "--remove-empty-units",
        action="store_true",
        help="remove the attention heads and FFN neurons that block pruning (SPLoPA, block "
        "fine-pruning) left entirely empty, so the exported model is smaller and faster "
        "(transformers of a described family)",
    )
    export.add_argument(
        "--input-shape",
        help="example input shape for ONNX tracing, e.g. 1,3,224,224 (default for CNNs: the "
        "model's input channels, 32 x 32)",
    )
    export.set_defaults(func=_export)
