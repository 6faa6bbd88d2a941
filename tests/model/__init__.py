"""Tests of meter_batch.model."""
