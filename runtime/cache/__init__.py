"""The feature cache: a folder numpy, pyarrow and embedding-reader can use without simx.

The room's public face; its modules, lowest first (each imports only those before it):

- ``format``      names, errors, Row/Failure, path encoding, the manifest's segments
- ``identity``    cache.json's model identity (make_meta) and the mismatch checks
- ``rowindex``    PathIndex: live rows by path, without one Python object per row
- ``tables``      the rows' metadata as Arrow tables and parquet files
- ``segments``    SegmentedEmbeddings: several segments' memmaps as one array
- ``reader``      read_state and FeatureCache
- ``staging``     the segment the next commit adds, streamed to disk
- ``lock``        the one-writer lock
- ``recovery``    the folder's housekeeping: crash leftovers, orphans, failed.jsonl
- ``merge``       compaction's policy (COMPACT_*) and its merge of the segments
- ``writer``      CacheWriter: lock, recovery, add/remove, commit, compact
- ``compaction``  ``simx cache compact``
- ``export``      ``simx cache export``

The COMPACT_* thresholds are read from simx.cache.merge at every commit: set them there.
"""

from simx.cache.compaction import compact
from simx.cache.export import FORMATS as EXPORT_FORMATS, export_cache
from simx.cache.format import (
    DAMAGED_HINT,
    DATA_FILES,
    EMB_DIR,
    EMBEDDINGS,
    FAILED,
    FORMAT,
    FORMAT_1_LEFTOVERS,
    FORMAT_VERSION,
    INDEX,
    LOCK,
    MANIFEST,
    META,
    META_DIR,
    NEW,
    STAGING,
    TMP,
    CacheError,
    CacheLockedError,
    CacheMismatchError,
    CacheWriteError,
    Failure,
    Row,
    canonical_path,
    damaged,
    decode_path,
    encode_path,
)
from simx.cache.identity import check_run, identity_meta, make_meta, run_of
from simx.cache.merge import COMPACT_DEAD_FRACTION, COMPACT_SEGMENTS
from simx.cache.reader import CacheState, FeatureCache, RowsView, read_state
from simx.cache.rowindex import UNKNOWN, PathIndex, path_keys
from simx.cache.segments import SegmentedEmbeddings
from simx.cache.writer import CacheWriter

__all__ = [
    "COMPACT_DEAD_FRACTION", "COMPACT_SEGMENTS", "DAMAGED_HINT", "DATA_FILES", "EMBEDDINGS",
    "EMB_DIR", "EXPORT_FORMATS", "FAILED", "FORMAT", "FORMAT_1_LEFTOVERS", "FORMAT_VERSION", "INDEX", "LOCK",
    "MANIFEST", "META", "META_DIR", "NEW", "STAGING", "TMP", "UNKNOWN",
    "CacheError", "CacheLockedError", "CacheMismatchError", "CacheState", "CacheWriteError",
    "CacheWriter", "Failure", "FeatureCache", "PathIndex", "Row", "RowsView",
    "SegmentedEmbeddings", "canonical_path", "check_run", "compact", "damaged", "decode_path",
    "encode_path", "export_cache", "identity_meta", "make_meta", "path_keys", "read_state",
    "run_of",
]
