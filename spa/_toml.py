"""The standard `tomllib` (Python 3.11+) or its backport `tomli` (Python 3.10) under one name."""

import sys

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised by `make test-python PY=python3.10`
    import tomli as tomllib

__all__ = ["tomllib"]
