"""Tests of meter_batch.ingest."""
