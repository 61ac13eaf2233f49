"""glibc allocator settings of a `spa serve` process: what keeps its resident memory near what
it uses.

Forward passes allocate and free large activation tensors from several threads. glibc's
malloc raises its mmap threshold after the first large free (up to 32 MiB), after which such
tensors come from per-thread arenas that keep freed memory resident: a server's RSS grows
well beyond its live tensors. A fixed mmap threshold (`M_MMAP_THRESHOLD`, which also turns off
the dynamic raise) hands every large tensor back to the system when it is freed, and capping
the arenas (`M_ARENA_MAX`) bounds what the remaining small allocations can hold. Both are set
with `mallopt` for this process only, as the environment variables `MALLOC_MMAP_THRESHOLD_`
and `MALLOC_ARENA_MAX` would. Elsewhere than glibc (macOS, musl) nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass
from functools import cache

from spa.errors import ConfigError

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # glibc malloc.h
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's limit for M_MMAP_THRESHOLD on 64-bit systems


@dataclass(frozen=True, kw_only=True)
class AllocatorSettings:
    """glibc malloc settings for a serving process.

    Args:
        mmap_threshold: allocations of at least this many bytes are mapped on their own and
            returned to the system when freed (None: glibc's default, a threshold that grows
            to 32 MiB). Lowers peak memory; page faults then cost CPU time in every forward
            pass (ResNet-50: about 1.7x the CPU time per image at 256 KiB).
        arena_max: most malloc arenas (None: glibc's default, 8 per core).

    Raises:
        ConfigError: for a threshold outside [0, 32 MiB] or an arena count below 1.
    """

    mmap_threshold: int | None = None
    arena_max: int | None = 2

    def __post_init__(self) -> None:
        threshold, arenas = self.mmap_threshold, self.arena_max
        if threshold is not None and not 0 <= threshold <= _MMAP_THRESHOLD_MAX:
            raise ConfigError(
                f"malloc mmap threshold must be within [0, {_MMAP_THRESHOLD_MAX}], got {threshold}"
            )
        if arenas is not None and arenas < 1:
            raise ConfigError(f"malloc arena max must be >= 1, got {arenas}")


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        library.gnu_get_libc_version  # noqa: B018 -- present in glibc only
    except (OSError, AttributeError):
        return None
    return library


def configure_allocator(settings: AllocatorSettings) -> bool:
    """Apply `settings` to this process's malloc; True if they took effect (glibc).

    Call it early (before worker threads start): arenas made before are kept.
    """
    threshold, arenas = settings.mmap_threshold, settings.arena_max
    library = _glibc()
    if library is None:
        if threshold is not None or arenas is not None:
            logger.info("not glibc: allocator settings left as they are")
        return False
    for option, value in ((_M_MMAP_THRESHOLD, threshold), (_M_ARENA_MAX, arenas)):
        if value is not None and library.mallopt(option, value) != 1:
            logger.warning("mallopt(%d, %d) was refused; allocator left as it is", option, value)
            return False
    return True


def release_free_memory() -> bool:
    """Give memory that malloc holds free back to the system (`malloc_trim`); True on glibc."""
    library = _glibc()
    if library is None:
        return False
    library.malloc_trim(0)
    return True
