# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.qae-installed

.PHONY: setup test demo lint bench bench-peers peers-venvs clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/qae demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy harness search profiles device_agents

bench: $(STAMP)
	$(PY) -m benchmarks

# The peers (issue 16) live in venvs of their own, built from the pyproject extras peers, peers-aimet
# and peers-inc (their pins clash); QAE_PEERS_PYTHON[_PEER] may name other interpreters.
peers-venvs: $(STAMP)
	$(PY) -m benchmarks.peers_venvs

bench-peers: peers-venvs
	$(PY) -m benchmarks.bench_peers

clean:
	rm -rf $(VENV) .venv-peers .venv-peers-aimet .venv-peers-inc .pytest_cache .mypy_cache .ruff_cache
