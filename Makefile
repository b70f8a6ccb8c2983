# The two commands: `make serve` and `make test`. Each bootstraps .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= ./memsvc-data
HOST   ?= 127.0.0.1
PORT   ?= 50051

.PHONY: serve test proto bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this resolves to the local CPU wheel instead of CUDA builds.
	$(PY) -m pip install -q torch==2.13.0 numpy==1.26.4
	$(PY) -m pip install -q -e '.[dev]'
	# diskannpy declares numpy==1.25 (breaks faiss-cpu); install it without its deps.
	$(PY) -m pip install -q --no-deps diskannpy==0.7.0
	touch $(STAMP)

serve: $(STAMP)
	$(PY) -m memsvc serve --data $(DATA) --host $(HOST) --port $(PORT)

# The Node.js contract worker's pinned packages (tests/test_contract.py runs it against a server).
NODE_MODULES := tests/node/node_modules/.package-lock.json

$(NODE_MODULES): tests/node/package.json tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund

# Two workers, one a core: most tests wait on servers, pipes and disks, so the suite takes about
# 80 s instead of 130 s on the 2-core machines; a test file stays whole in one worker (module fixtures).
# A worker that dies (pytest-timeout ends a stuck test that way) ends the run at once: a replaced
# worker was seen to leave the run waiting forever.
test: $(STAMP) $(NODE_MODULES)
	$(PY) -m pytest -q -n 2 --dist loadfile --max-worker-restart 0 tests

# Regenerate the committed gRPC stubs from proto/ (tests/test_proto.py fails when they are stale).
proto: $(STAMP)
	$(PY) -m memsvc.wire.protogen

bench: $(STAMP)
	$(PY) bench/lookup.py

clean:
	rm -rf $(VENV) $(DATA)
