"""Tests of `devices`."""
