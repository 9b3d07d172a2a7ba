"""Tests of `builtin`."""
