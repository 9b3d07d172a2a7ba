"""Tests of `quant`."""
