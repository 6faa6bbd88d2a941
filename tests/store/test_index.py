"""The FAISS index split for parallel scans (serve): the same neighbours and scores as
the whole index, every stored vector found again by its id."""

from __future__ import annotations

import numpy as np
import pytest

from meter_batch.store.index import ShardedIndex, add_embeddings, new_index, searchable


@pytest.mark.parametrize("shards", [2, 3, 7])
def test_a_sharded_index_answers_as_the_whole_one(shards):
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((1000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.permutation(10_000)[:1000].astype(np.int64)  # not 0..N-1: stored image ids
    whole = new_index(32)
    add_embeddings(whole, ids, vectors)
    split, plain = searchable(whole, shards), searchable(whole)
    assert isinstance(split, ShardedIndex) and len(split.parts) == shards
    sizes = [int(p.ntotal) for p in split.parts]
    assert sum(sizes) == 1000 and max(sizes) - min(sizes) <= 1  # even parts
    queries = vectors[:20]
    split_scores, split_ids = split.search(queries, 10)
    plain_scores, plain_ids = plain.search(queries, 10)
    assert np.array_equal(split_ids, plain_ids)
    assert np.array_equal(split_scores, plain_scores)
    assert list(split_ids[:, 0]) == list(ids[:20])  # each vector is its own nearest
    for image_id in ids[[0, 499, 999]]:
        assert np.array_equal(split.reconstruct(int(image_id)), plain.reconstruct(int(image_id)))
    with pytest.raises(RuntimeError):
        split.reconstruct(10_001)
