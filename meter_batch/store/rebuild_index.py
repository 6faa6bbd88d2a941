"""`rebuild-index`: the FAISS index is derived data; recreate it from the live vectors."""

from __future__ import annotations

from pathlib import Path

from meter_batch.store.catalog import refresh_catalog
from meter_batch.store.commit import (
    commit,
    locked,
    next_manifest,
    open_existing,
    open_store,
    staged_path,
)
from meter_batch.store.index import new_index, reconcile_index, save_index
from meter_batch.store.layout import index_file


def rebuild_index(store_root: Path) -> int:
    """Recreate the FAISS index from the live vectors (it is derived data); commit it."""
    open_store(store_root)  # a clear error, and nothing created, when it is not a store
    with locked(store_root) as lock:
        store = open_existing(store_root, lock)
        index = reconcile_index(store, new_index(store.identity.embed_dim))
        relpath = index_file(store.manifest.seq + 1)
        staged = staged_path(store, relpath)
        save_index(index, staged)
        manifest = next_manifest(store, index=relpath, index_current=True)
        commit(store, manifest, [], staged)
        refresh_catalog(store)
        return int(index.ntotal)
