# Set-up for refcoco-edit. `make demo` and `make test` are the two commands a new user runs.
# Everything installs into .venv at the repository root; torch comes pinned (constraints.txt) so
# that pip takes the CPU wheel where one lies on disk instead of a multi-GB CUDA build.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
EXTRAS ?= dev,app,train
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test test-all bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install only when the project's requirements change.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	# clip-anytorch only for its BPE vocabulary file; --no-deps keeps torchvision and a CUDA torch out
	$(PIP) install --quiet --no-deps "clip-anytorch==2.6.0"
	@if $(BIN)/python -c "import torchvision" 2>/dev/null; then \
		echo "torchvision is installed in $(VENV) and breaks beside this torch: pip uninstall torchvision"; exit 1; fi
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/refcoco-edit demo --out demo_out

test: install
	$(BIN)/python -m pytest -q

# Everything, including the slow tests.
test-all: install
	$(BIN)/python -m pytest -q -m "not gpu"

bench: install
	$(BIN)/python benchmarks/refer_index.py

clean:
	rm -rf $(VENV) demo_out .cache
