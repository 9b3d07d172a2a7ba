"""Hardware profiles (YAML, every number with its source) and the analytic cost model."""
