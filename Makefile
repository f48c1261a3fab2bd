# Everything a fresh machine needs: `make demo` and `make test` create the virtual environment themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Dev-only environment with PyTorch CPU, used only to (re)train the bundled models.
MODELS_VENV ?= .venv-models
EFFNET := models/efficientnet-lite0.onnx
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast bench models lint mutation clean

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,demo,dask]'
	touch $@

$(EFFNET): $(INSTALLED)
	$(BIN)/lrp zoo get efficientnet-lite0 --dest models

demo: $(INSTALLED) $(EFFNET)
	$(BIN)/lrp explain sample_images/chelsea.png sample_images/coffee.png --model $(EFFNET) --out $(DEMO_OUT)
	$(BIN)/lrp explain 'sample_images/shapes/*_[0-9].png' --model models/shapes-cnn.onnx --out $(DEMO_OUT)/shapes
	$(BIN)/lrp explain sample_images/digits --model models/digits-mlp.onnx --out $(DEMO_OUT)/digits
	$(BIN)/lrp explain sample_images/polygons_scene.png --model models/polygons-bow-svm.joblib --target positive \
		--out $(DEMO_OUT)
	$(BIN)/lrp explain sample_texts/mixed.txt --model models/text-sentiment.joblib --out $(DEMO_OUT)/text
	@echo "heatmaps written to $(DEMO_OUT)/"

# The fast suite, then the slow one (real models); pytest exits 5 when a marker selects nothing.
test: $(INSTALLED)
	$(BIN)/python -m pytest -q -rs -m "not slow"
	$(BIN)/python -m pytest -q -rs -m slow || [ $$? -eq 5 ]

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(INSTALLED) $(EFFNET)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/report_bench.py

models:
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/python -m pip install --quiet torch==2.13.0 numpy onnx onnxruntime pillow scikit-learn
	$(MODELS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(MODELS_VENV)/bin/python scripts/build_models.py
	$(MAKE) $(INSTALLED)
	$(BIN)/python scripts/build_polygons_bow.py

lint: $(INSTALLED)
	$(BIN)/python -m pip install --quiet ruff
	$(BIN)/python -m ruff check --select E,F,W --line-length 120 src tests scripts benchmarks
	$(BIN)/lint-imports --no-logo

# Mutation testing of cli/preprocess/render/outputs/batch/api against the CLI/API tests that reach each function
# (mutmut 3, config in pyproject.toml); not part of `make test`. All ~1900 mutants take hours on 2 shared cores,
# so it runs MUTANTS_PER_MODULE evenly spaced ones per module (0: all). The first run only generates the mutants
# and maps tests to functions (it matches no mutant on purpose).
# mutmut forks its workers from a process that ran the tests: with threaded OpenMP/BLAS pools the BoW mutants'
# workers deadlock, so the pools are kept to one thread.
MUTANTS_PER_MODULE ?= 30
MUTMUT := OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut
mutation: $(INSTALLED)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test,demo,mutation]'
	rm -rf mutants
	$(MUTMUT) run --max-children 2 map-tests-only >/dev/null 2>&1 || true
	$(MUTMUT) run --max-children 2 $$($(BIN)/python scripts/mutation_report.py --sample $(MUTANTS_PER_MODULE))
	$(BIN)/python scripts/mutation_report.py --survivors

clean:
	rm -rf $(VENV) mutants $(DEMO_OUT) $(EFFNET) models/efficientnet-lite0.lrp.toml
