"""Tests of meter_batch.tools."""
