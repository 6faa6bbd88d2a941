-- failures: every file that could not be encoded, with a stable kind and the decoder's message.
CREATE OR REPLACE VIEW failures AS
SELECT path, path_bytes, size, mtime_ns, kind, message, run_id
FROM read_parquet({{failure_files}});
