"""Tests of meter_batch.labels."""
