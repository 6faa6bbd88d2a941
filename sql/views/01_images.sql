-- images: one row per committed, live image (not deleted, not superseded); `embedding`
-- is FLOAT[D] so array_cosine_similarity / array_inner_product work on it directly.
CREATE OR REPLACE VIEW images AS
SELECT
    image_id,
    path,
    path_bytes,
    size,
    mtime_ns,
    make_timestamp(mtime_ns // 1000) AS mtime,
    width,
    height,
    frames,
    content_hash,
    run_id,
    CAST(embedding AS FLOAT[{{dim}}]) AS embedding
FROM read_parquet({{embedding_files}})
WHERE image_id NOT IN (SELECT image_id FROM tombstones WHERE image_id IS NOT NULL);
