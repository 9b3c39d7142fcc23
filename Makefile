# `make demo`: set up, record CarRacing episodes, train the default world model (with reward and continuation
# heads), export it, time its rollouts and drive the real environment with the planner for a short episode,
# beside the random policy and the recording one.
# `make test`: set up and run the test suite. Both create or reuse the virtual environment in .venv.
# `make lint`: set up, then ruff (lint, format) and mypy, which reads the TensorRT API from the stubs that
# tools/tensorrt_stubs.py puts into typings/.
# `make docs`: set up, check that every measured table matches its results file (docs/results/), build the
# site into site/ with mkdocs --strict (a broken link or a missing API reference fails).
# `make gpu-check`: on a machine with a CUDA device, the GPU tests and benchmarks (no venv).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed on its own first, pinned, so that pip never resolves a multi-GB CUDA build on a CPU
# machine. Where the pinned CPU build is not on a local index, add e.g. TORCH_PIP_ARGS="--index-url <CPU index>".
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
# `make demo ACTION_REPEAT=4`: record with each action held 4 frames (wm-collect --action-repeat), into folders of
# their own; training, export and wm-control take K from the data.
ACTION_REPEAT ?= 1
DEMO_SUFFIX := $(if $(filter-out 1,$(ACTION_REPEAT)),_k$(ACTION_REPEAT))
DEMO_DATA := data/carracing$(DEMO_SUFFIX)
DEMO_RUN := runs/carracing$(DEMO_SUFFIX)
DEMO_SET := --set data.path=$(DEMO_DATA) --set train.out_dir=$(DEMO_RUN)

.PHONY: setup demo test lint docs results gpu-check clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[cpu,envs,dev,docs,kernels]"
	touch $@

# meta.json is written last, once every episode is there (recordings without it predate rewards: re-record)
$(DEMO_DATA)/meta.json: | setup
	$(VENV)/bin/wm-collect CarRacing-v3 -o $(DEMO_DATA) --episodes 32 --steps 200 --seed 0 --action-repeat $(ACTION_REPEAT)

demo: setup $(DEMO_DATA)/meta.json
	@if [ -f $(DEMO_RUN)/last.pt ]; then $(VENV)/bin/wm-train configs/carracing.yaml $(DEMO_SET) --resume; \
	else $(VENV)/bin/wm-train configs/carracing.yaml $(DEMO_SET); fi
	$(VENV)/bin/wm-export $(DEMO_RUN)/best.pt --data $(DEMO_DATA) --overwrite
	$(PY) benchmarks/rollout_latency.py --artifacts $(DEMO_RUN)/artifacts --quick --plot $(DEMO_RUN)/rollout_latency.png
	$(VENV)/bin/wm-control $(DEMO_RUN)/artifacts --episodes 1 --steps 300 --seed 100 --no-progress --overwrite

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) tools/tensorrt_stubs.py
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: setup
	$(PY) benchmarks/results.py --check
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

# re-render every measured table of README.md and docs/ from its results file
results: setup
	$(PY) benchmarks/results.py

# On a lent GPU machine, with its own python3 and packages (no venv): the CUDA tests, rollout latency on every
# backend present, training throughput; files into $$OUT (else ./gpu-check). See benchmarks/gpu_check.py.
gpu-check:
	PYTHONPATH=. python3 benchmarks/gpu_check.py --out "$${OUT:-gpu-check}"

clean:
	rm -rf $(VENV) data runs artifacts typings site
