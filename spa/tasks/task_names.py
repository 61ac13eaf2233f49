"""Task names: what may name a task in a host, and the name a bundle records for itself."""

from __future__ import annotations

from typing import Any

from spa.errors import ConfigError
from spa.tasks.format import Bundle

# Keys a signature record or the metadata may hold the task name under (issue 24: the signed
# payload binds it).
_TASK_NAME_KEYS = ("task_name", "task")
_MAX_NAME = 200


def check_task_name(name: Any) -> str:
    """Return `name` if it can name a task: a printable string of 1-200 characters, no `/`, no
    leading or trailing white space (it appears in URLs and logs).

    Raises:
        ConfigError: naming the value.
    """
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= _MAX_NAME
        or not name.isprintable()
        or name != name.strip()
        or "/" in name
    ):
        raise ConfigError(
            f"TaskHost: a task name must be a printable string of 1-{_MAX_NAME} characters "
            f"without '/' or surrounding spaces, got {name!r}"
        )
    return name


def recorded_task_name(bundle: Bundle) -> str | None:
    """The task name a bundle records: its signature record's `task` (signed with the content),
    else a name in its metadata; None for bundles that record none."""
    records = [bundle.signature or {}, bundle.metadata]
    for record, key in ((r, k) for r in records for k in _TASK_NAME_KEYS):
        value = record.get(key)
        if isinstance(value, str):
            return value
    return None
