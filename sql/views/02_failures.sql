-- failures: files that could not be encoded and still stand: the latest failure of each
-- path, unless the path has since been encoded or the file is gone.
CREATE OR REPLACE VIEW failures AS
SELECT path, path_bytes, size, mtime_ns, kind, message, run_id
FROM read_parquet({{failure_files}}) AS f
WHERE path NOT IN (SELECT path FROM images)
  AND NOT EXISTS (
      SELECT 1 FROM tombstones AS t
      WHERE t.image_id IS NULL AND t.path = f.path AND t.run_id >= f.run_id
  )
QUALIFY row_number() OVER (PARTITION BY path ORDER BY run_id DESC) = 1;
