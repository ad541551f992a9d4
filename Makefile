# Two commands a fresh machine needs: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The project's shared copy of CIFAR-10 when it is there; otherwise $SERATIO_DATA, then the download cache.
SHARED_DATA := $(abspath ../shared/data/cifar10)
ifneq ($(wildcard $(SHARED_DATA)),)
export SERATIO_DATA ?= $(SHARED_DATA)
endif
DEMO_DIR ?= demo-out

.PHONY: venv demo test benchmark clean

venv: $(VENV)/.installed

# torch is pinned and installed first: pip then takes the CPU wheel on this disk instead of a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: venv
	$(BIN)/python scripts/demo.py --out $(DEMO_DIR)

# The tests need PostgreSQL, Chromium and tcmalloc: installed (apt, as root) and started first.
# Two pytest processes with one torch thread each: on a 2-core machine they finish the suite sooner
# than one process with two threads, which spends much of each tiny step synchronising its threads.
test: venv
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 bash scripts/test-services.sh $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder

benchmark: venv
	$(BIN)/python benchmarks/train_throughput.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
