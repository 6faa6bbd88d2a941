"""The map's PCA equals numpy's SVD of the centred sample (up to each axis's sign, which
is fixed: the largest coordinate of each axis is positive)."""

from __future__ import annotations

import numpy as np

from meter_batch.report.projection import _pca


def test_pca_is_the_svd_projection_with_fixed_signs():
    rng = np.random.default_rng(2)
    # three directions of very different spread, plus noise: the leading two are clear
    basis = np.linalg.qr(rng.normal(size=(64, 3)))[0].T
    vectors = (rng.normal(size=(500, 3)) * [9.0, 4.0, 1.0]) @ basis
    vectors = (vectors + 0.01 * rng.normal(size=vectors.shape)).astype(np.float32)
    got = _pca(vectors)
    centred = vectors.astype(np.float64) - vectors.astype(np.float64).mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    want = centred @ vt[:2].T
    want *= np.sign(want[np.abs(want).argmax(axis=0), [0, 1]])
    assert np.abs(got - want).max() < 1e-3 * np.abs(want).max()
    assert (got[np.abs(got).argmax(axis=0), [0, 1]] > 0).all()
