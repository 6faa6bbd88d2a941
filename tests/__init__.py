"""meter_batch's tests: laid out like the package (tests/ingest/ tests meter_batch/ingest/, ...)."""
