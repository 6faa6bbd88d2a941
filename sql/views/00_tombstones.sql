-- tombstones: rows that ended — an image deleted from disk or superseded by a newer
-- version of its file (image_id set), or a failed file that is gone (image_id NULL).
CREATE OR REPLACE VIEW tombstones AS
SELECT image_id, path, path_bytes, reason, run_id
FROM read_parquet({{tombstone_files}});
