"""Bundle layer codecs' toolkit, below the adapter kinds (STYLE B2).

Each adapter kind writes and reads its own bundle entries (`spa.adapters.<kind>.codec`,
registered as `AdapterKind.codec`); they need a typed writer (`writer.BundleWriter`: tensors,
masks, channel selections, shared records), the view of a stored bundle they read
(`protocols.StoredBundle`), decoded selections and checked tensors (`entries`), field checks
(`fields`), module-record and tensor helpers (`records`) and the base positions compaction
kept in narrowed module tensors (`kept`). None of these import `spa.adapters` or `spa.tasks`,
so a kind never climbs up to `spa.tasks`.
"""

from spa.codec.protocols import STORAGE_DTYPES, Entry, LayerCodec, LayerPlan, StoredBundle
from spa.codec.writer import BundleWriter

__all__ = ["STORAGE_DTYPES", "BundleWriter", "Entry", "LayerCodec", "LayerPlan", "StoredBundle"]
