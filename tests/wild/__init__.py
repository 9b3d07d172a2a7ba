"""A corpus of small "models from the wild" that tests build themselves, and a probe of qae on each."""
