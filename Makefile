# Two entry points that do all set-up on a fresh machine:
#   make run   - compile every stage and layer kind for `flash` with the default pipeline and check them (table);
#                `make run RUN_ARGS='--markdown docs/main-job.md'` also regenerates the docs' table
#   make test  - the test suite (what CI runs)
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
TSTAMP  := $(VENV)/.installed-test

.PHONY: run test bench setup clean

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	# torch first, pinned, so that nothing can pull a CUDA build
	$(VPY) -m pip install -q torch==2.13.0
	$(VPY) -m pip install -q -e .
	# ptoas 0.1.1's binary needs plain-named links to its bundled libraries and empty stubs (gcc) to start
	$(VPY) -m attnc.codegen.pto.ptoas
	touch $(STAMP)

# the test extra (pytest, hypothesis, lit, filecheck) for `make test`
$(TSTAMP): $(STAMP)
	$(VPY) -m pip install -q -e '.[test]'
	touch $(TSTAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VPY) benchmarks/main_job.py --config flash $(RUN_ARGS)

test: $(TSTAMP)
	$(VPY) -m pytest -q

bench: $(STAMP)
	$(VPY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
