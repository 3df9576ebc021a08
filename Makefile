# Set-up on a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv in the repo root, install the pinned dependencies of
# requirements.lock and build the compiled ops (CUDA kernels too when a CUDA
# toolkit is found; see setup.py for DGE_EXPLAIN_CUDA and CUDA_HOME).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Shared data and weights: the folder beside the checkout unless set.
export DGE_EXPLAIN_HOME ?= $(abspath ../shared)
EXT_SOURCES := $(wildcard ext/*.cpp ext/*.h ext/cpu/*.cpp ext/cuda/*.cu ext/cuda/*.cuh)

.PHONY: venv build test test-fast demo bench-ops gpu-check readme-figures docs notebook clean

venv: $(STAMP)

$(STAMP): requirements.lock setup.cfg pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	DGE_EXPLAIN_BUILD_EXT=0 $(PY) -m pip install --quiet --disable-pip-version-check --no-deps \
		--no-build-isolation -e .
	touch $@

# Incremental (ninja) rebuild of dge_explain/_C after editing ext/.
build: $(STAMP) $(EXT_SOURCES)
	$(PY) setup.py --quiet build_ext --inplace

test: build
	DGE_EXPLAIN_REQUIRE_EXT=1 $(PY) -m pytest

test-fast: build
	DGE_EXPLAIN_REQUIRE_EXT=1 $(PY) -m pytest -m "not slow"

# The main job: gating maps of the shipped DGE-DeiT-Tiny (the recommended map, layer 9,
# beside layers 1, 4, 8, 12 and its margin) against GradCAM and random maps on ECSSD's
# held-out half (500 images no router saw, about a minute on 2 cores; DEMO_IMAGES=N for
# fewer; rerunning resumes, or reprints the table of a finished run).
DEMO_IMAGES ?= 500
demo: build
	$(VENV)/bin/dge-explain evaluate --model deit_dge_s12_tiny_patch16_224.distilled \
		--dataset ecssd:$(DGE_EXPLAIN_HOME)/data/ecssd:odd --methods random gradcam gating gating:1,4,8,12 \
		gating-margin --limit $(DEMO_IMAGES) --out runs/demo-$(DEMO_IMAGES)

# The GPU check (one visible CUDA device; about 5 minutes on an H100/H200): the CUDA
# kernels built for this device's architecture only, then the CUDA tests, the DGE models
# against the reference ops and the timings, into GPU_CHECK_OUT (gpu-check.json and .md).
GPU_CHECK_OUT ?= runs/gpu-check
gpu-check: $(STAMP)
	$(PY) -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "make gpu-check needs a visible CUDA device")'
	DGE_EXPLAIN_CUDA=1 TORCH_CUDA_ARCH_LIST="$$($(PY) -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
		$(PY) setup.py --quiet build_ext --inplace
	DGE_EXPLAIN_REQUIRE_EXT=1 $(PY) -m dge_explain.bench.gpu_check --out $(GPU_CHECK_OUT)

# The README's example figures (needs runs/ecssd-full from eval/ecssd_table.sh, the
# league's runs/league-* from eval/league.sh and runs/bench-cpu.json from
# `dge-explain bench --json runs/bench-cpu.json`).
readme-figures: build
	$(VENV)/bin/dge-explain figures --run runs/ecssd-full --out docs/figures --images 3 --dpi 80
	# the league's figures (runs/league-* from eval/league.sh)
	$(PY) figures/comparison.py --methods attention rollout attention-gradcam relevance gradcam \
		gradcam-elementwise gating --layers 8 --images 0 1 2 --out docs/figures/league_comparison --dpi 80
	$(PY) figures/pr_curves.py --run runs/league-ecssd-dge --out docs/figures/league_pr_curves --dpi 80
	cp runs/league-perturb-dge/perturbation.png docs/figures/league_perturbation.png
	$(PY) figures/detection.py --out docs/figures/detection --dpi 80
	$(PY) figures/semantic.py --out docs/figures/semantic --dpi 80
	$(PY) figures/runtime.py runs/bench-cpu.json --out docs/figures/runtime --dpi 80
	# reuses the finished runs of runs/gamma-sweep (trains the missing ones: ~13 min per gamma)
	$(PY) eval/gamma_sweep.py --dpi 80
	cp runs/gamma-sweep/summary.png docs/figures/gamma_sweep.png

# Five rounds: each cell is the median over rounds, the range in brackets (~2 minutes).
bench-ops: build
	$(PY) -m dge_explain.bench.ops --rounds 5

# The documentation site (mkdocs.yml: docs/ and the API reference from the docstrings) into
# site/, with every warning an error. Needs only the pinned tools of requirements-docs.lock:
# mkdocstrings reads the package's source without importing it, so neither the package
# nor the ops are installed or built for it. mkdocs keeps hidden files when it cleans site/,
# so the .gitignore written there keeps the build out of git.
DOCS_STAMP := $(VENV)/.docs-installed
$(DOCS_STAMP): requirements-docs.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-docs.lock
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site
	echo '*' > site/.gitignore

# The tutorial (notebooks/tutorial.ipynb, kept without outputs) executed on NOTEBOOK_IMAGES
# ECSSD photos into runs/tutorial/: the notebook with its outputs, the evaluate run it
# starts and its figure. tests/test_notebook.py runs the same notebook on 2 images.
NOTEBOOK_IMAGES ?= 8
notebook: build
	mkdir -p runs/tutorial
	cp notebooks/tutorial.ipynb runs/tutorial/tutorial.ipynb
	DGE_NOTEBOOK_IMAGES=$(NOTEBOOK_IMAGES) DGE_NOTEBOOK_OUT=$(abspath runs/tutorial) \
		$(VENV)/bin/jupyter-execute --inplace --timeout=600 runs/tutorial/tutorial.ipynb

clean:
	rm -rf build dge_explain/_C*.so *.egg-info
