"""qae benchmarks: each part runs alone (python -m benchmarks.NAME) and writes results/bench/NAME.json."""
