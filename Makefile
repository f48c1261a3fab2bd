# Everything a fresh machine needs: `make demo` and `make test` create the virtual environment themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Dev-only environment with PyTorch CPU, used only to (re)train the bundled models.
MODELS_VENV ?= .venv-models
EFFNET := models/efficientnet-lite0.onnx
DEMO_OUT ?= demo_out

.PHONY: demo test test-fast test-portability bench models lint mutation clean

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
	$(BIN)/lrp explain sample_texts/mixed.txt --model models/text-lstm.onnx --target positive --out $(DEMO_OUT)/text-lstm
	@echo "heatmaps written to $(DEMO_OUT)/"

# The fast suite, then the slow one (real models); pytest exits 5 when a marker selects nothing.
test: $(INSTALLED)
	$(BIN)/python -m pytest -q -rs -m "not slow"
	$(BIN)/python -m pytest -q -rs -m slow || [ $$? -eq 5 ]

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

# The numeric tests (marker "numeric": onnxruntime float32 against a stated bound) under other kernels and summation
# orders (docs/testing.md): each LRP_CLI_ORT_OPTIONS setting below, then a representative subset on emulated CPUs
# without AVX-512 (Haswell: AVX2+FMA) and without AVX (Nehalem: SSE4.2) under qemu-x86_64 (Debian: apt-get install
# qemu-user; ~50x slower, hence the subset). Skips the emulation with a note when qemu-x86_64 is absent.
PORTABILITY_OPTIONS ?= threads=1 threads=2 optimization=disable optimization=basic threads=1,optimization=extended
QEMU_CPUS ?= Haswell Nehalem
QEMU_TESTS ?= tests/test_compiled_engine.py::test_bundled_models_compiled_float32_match_numpy_float64 \
	tests/test_compiled_engine.py::test_a_slightly_wrong_compiled_rule_fails_the_same_forward_comparison \
	"tests/test_compiled_transformers.py::test_layer_rules_on_norm_softmax_and_product_compile_as_numpy_computes_them[vit_legacy17-overrides1]"
test-portability: $(INSTALLED)
	@for options in "" $(PORTABILITY_OPTIONS); do \
		echo "== LRP_CLI_ORT_OPTIONS=$$options"; \
		LRP_CLI_ORT_OPTIONS=$$options $(BIN)/python -m pytest -q -p no:cacheprovider -m numeric || exit 1; \
	done
	@if ! command -v qemu-x86_64 >/dev/null; then echo "qemu-x86_64 absent: emulated CPUs skipped"; exit 0; fi; \
	for cpu in $(QEMU_CPUS); do \
		echo "== qemu-x86_64 -cpu $$cpu"; \
		qemu-x86_64 -cpu $$cpu $(BIN)/python -m pytest -q -p no:cacheprovider $(QEMU_TESTS) || exit 1; \
	done

bench: $(INSTALLED) $(EFFNET)
	$(BIN)/python benchmarks/bench.py
	$(BIN)/python benchmarks/report_bench.py

models:
	$(PYTHON) -m venv $(MODELS_VENV)
	$(MODELS_VENV)/bin/python -m pip install --quiet torch==2.13.0 numpy onnx onnxruntime pillow scikit-learn click
	$(MODELS_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(MODELS_VENV)/bin/python scripts/build_models.py
	$(MODELS_VENV)/bin/python scripts/build_text_lstm.py
	$(MAKE) $(INSTALLED)
	$(BIN)/python scripts/build_polygons_bow.py
	$(BIN)/python scripts/build_text_lstm.py --figure

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
