"""Ed25519 signatures of task bundles: keys, signing and verification against trusted keys.

A signature signs `spa.tasks.format.signed_message(document, task)`: the task name, the base
fingerprint and the canonical metadata document, which carries the checksum over every tensor's
name, dtype, shape and bytes, so it covers the whole file and says which task it is. It is stored
in the safetensors header next to the document, as
`{"algorithm": "ed25519", "key_id": ..., "signature": <base64>, "task": ...}`. A signed bundle
copied over another task's file name is refused where the task name is expected (`load_task`
expects the file's name, `TaskHost.add_task` its `name`). Version-1 records (no `task`, spa 0.1)
still verify, and are refused with a message to re-sign where a task name is expected. Keys are
PEM files (private: PKCS#8, written 0o600; public: SubjectPublicKeyInfo). This module is the
only place that imports `cryptography`.

The checksum only detects accidents (anyone can recompute it); a valid signature from a trusted
key shows the bundle was written for that task and base by a holder of that private key and not
changed since. A key file may hold several PEM public keys: every one of them is trusted.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from spa.errors import BundleError, ConfigError
from spa.tasks.format import Bundle, signed_message, write_atomic

ALGORITHM = "ed25519"
KeySource = Ed25519PublicKey | Ed25519PrivateKey | str | os.PathLike | bytes
PrivateKeySource = Ed25519PrivateKey | str | os.PathLike | bytes


def generate_private_key() -> Ed25519PrivateKey:
    """A new random Ed25519 private key."""
    return Ed25519PrivateKey.generate()


def write_key_pair(
    private_key: Ed25519PrivateKey, private_path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write `private_key` as PEM to `private_path` (mode 0o600) and its public key next to it.

    Args:
        private_key: the key to write.
        private_path: the private key file; the public key goes to `private_path` + `.pub`.
        overwrite: replace existing key files; without it, either file existing is refused
            before anything is written.

    Returns:
        The public key file: `private_path` with suffix `.pub` (e.g. `signer.pem.pub`).

    Raises:
        ConfigError: if a key file exists and `overwrite` is False.
    """
    public_path = Path(f"{private_path}.pub")
    existing = [str(p) for p in (Path(private_path), public_path) if p.exists() or p.is_symlink()]
    if existing and not overwrite:
        raise ConfigError(f"{existing[0]} exists; pass --force (overwrite=True) to replace it")
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_atomic(private_path, private_pem, mode=0o600)
    write_atomic(public_path, public_pem(private_key.public_key()))
    return public_path


def public_pem(public_key: Ed25519PublicKey) -> bytes:
    """The PEM (SubjectPublicKeyInfo) text of `public_key`."""
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short, stable name of a public key: `ed25519:` and 16 hex digits of its sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"{ALGORITHM}:{hashlib.sha256(raw).hexdigest()[:16]}"


_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)


def _pem(source: str | os.PathLike | bytes, what: str) -> tuple[list[bytes], str]:
    """The PEM blocks of a file or of bytes (the whole text if it holds none), and its name."""
    if isinstance(source, bytes):
        data, name = source, f"{what} (PEM bytes)"
    else:
        try:
            data, name = Path(source).read_bytes(), str(source)
        except OSError as error:
            raise ConfigError(f"{source}: cannot read {what} ({error.strerror})") from None
    blocks = [match.group(0) for match in _PEM_BLOCK.finditer(data)]
    return blocks or [data], name


def load_private_key(source: PrivateKeySource) -> Ed25519PrivateKey:
    """An Ed25519 private key from a key object, a PEM file path or PEM bytes.

    Raises:
        ConfigError: if the file cannot be read or holds no unencrypted Ed25519 private key.
    """
    if isinstance(source, Ed25519PrivateKey):
        return source
    blocks, name = _pem(source, "private key")
    if len(blocks) > 1:
        raise ConfigError(f"{name}: holds {len(blocks)} PEM blocks, expected one private key")
    data = blocks[0]
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise ConfigError(f"{name}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{name}: a {type(key).__name__}, expected an Ed25519 private key")
    return key


def load_public_key(source: KeySource) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object (private keys give theirs), a PEM path or bytes.

    Raises:
        ConfigError: if the file cannot be read, holds no Ed25519 public key, or holds several
            (use `load_public_keys`).
    """
    keys = load_public_keys(source)
    if len(keys) > 1:
        raise ConfigError(f"{source}: holds {len(keys)} public keys, expected one")
    return keys[0]


def load_public_keys(source: KeySource) -> list[Ed25519PublicKey]:
    """Every Ed25519 public key of a key object, or of a PEM path or bytes (one or more keys).

    Raises:
        ConfigError: if the file cannot be read or one of its PEM blocks is no Ed25519 public key.
    """
    if isinstance(source, Ed25519PublicKey):
        return [source]
    if isinstance(source, Ed25519PrivateKey):
        return [source.public_key()]
    blocks, name = _pem(source, "public key")
    keys = []
    for number, data in enumerate(blocks, start=1):
        where = f"{name} (key {number} of {len(blocks)})" if len(blocks) > 1 else name
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError, UnsupportedAlgorithm) as error:
            raise ConfigError(f"{where}: not a PEM public key ({error})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{where}: a {type(key).__name__}, expected an Ed25519 public key")
        keys.append(key)
    return keys


def signer(private_key: PrivateKeySource) -> Callable[[bytes], dict[str, str]]:
    """A function mapping a message to the signature record that `write_bundle` stores."""
    key = load_private_key(private_key)
    identity = key_id(key.public_key())

    def sign(message: bytes) -> dict[str, str]:
        signature = base64.b64encode(key.sign(message)).decode()
        return {"algorithm": ALGORITHM, "key_id": identity, "signature": signature}

    return sign


def trusted_key_set(trusted_keys: KeySource | Iterable[KeySource]) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id, from one key source or an iterable of them; a file with
    several PEM public keys contributes every one.

    Raises:
        ConfigError: for an empty collection or a key that cannot be loaded.
    """
    if isinstance(trusted_keys, KeySource):
        trusted_keys = [trusted_keys]
    keys = [key for source in trusted_keys for key in load_public_keys(source)]
    if not keys:
        raise ConfigError("trusted_keys is empty; pass None to accept unsigned bundles")
    return {key_id(key): key for key in keys}


def verify_bundle(
    bundle: Bundle, trusted: dict[str, Ed25519PublicKey], task: str | None = None
) -> str:
    """Check that `bundle` carries a valid signature by one of the `trusted` keys (for `task`).

    Args:
        bundle: a bundle from `read_bundle`, or its description (metadata and signature).
        trusted: from `trusted_key_set`.
        task: the task name the bundle is loaded as; the signature must name it. None checks
            the signature only (it still binds the name it was made for).

    Returns:
        The id of the key that signed it.

    Raises:
        BundleError: if the bundle is unsigned, signed by an untrusted key, signed for another
            task, or the signature does not match its content.
    """
    source = bundle.path or "bundle"
    record = bundle.signature
    if record is None:
        raise BundleError(f"{source}: the bundle is not signed, and trusted keys are required")
    identity = record["key_id"]
    if record["algorithm"] != ALGORITHM or identity not in trusted:
        raise BundleError(
            f"{source}: signed by {record['algorithm']} key {identity!r}, which is not among the "
            f"trusted keys {sorted(trusted)}"
        )
    try:
        signature = base64.b64decode(record["signature"], validate=True)
        trusted[identity].verify(signature, signed_message(bundle.metadata, record.get("task")))
    except (InvalidSignature, ValueError):
        raise BundleError(
            f"{source}: the signature by key {identity!r} does not match the bundle's content; "
            "the file was altered after signing"
        ) from None
    if task is not None and "task" not in record:
        raise BundleError(
            f"{source}: signed by an older spa (signature v1), which does not name the task; "
            f"re-sign it: spa bundle sign {source} --key KEY"
        )
    if task is not None and record["task"] != task:
        raise BundleError(
            f"{source}: signed for task {record['task']!r}, loaded as task {task!r}; a signed "
            "bundle keeps its task name (rename the file back, or pass the signed name explicitly)"
        )
    return identity
