"""Tests of meter_batch.store."""
