"""Tests of `profiles`."""
