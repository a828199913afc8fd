"""Collections, shards and distribution: explain an image collection (a folder, a glob, a list, a Parquet table)
into Parquet rows, one shard at a time, resumably (:mod:`.local` in this process; :mod:`.ray_engine` on Ray)."""
from .collection import Collection, Item, is_collection_spec, open_collection
from .local import explain_collection
from .rows import ERROR_SCHEMA, ROW_SCHEMA, explanation_rows, row_array
from .shards import in_shard, parse_shard
from .store import Store, read_errors, read_manifest, read_rows

__all__ = ["Collection", "ERROR_SCHEMA", "Item", "ROW_SCHEMA", "Store", "explain_collection", "explanation_rows",
           "in_shard", "is_collection_spec", "open_collection", "parse_shard", "read_errors", "read_manifest",
           "read_rows", "row_array"]
