# dsv3-edu: two commands do all the set-up.
#   make lab    create .venv if missing, install, start JupyterLab on notebooks/
#   make test   lint, unit tests, then strict nbval over every notebook
# Both install only when pyproject.toml or .ci/constraints.txt changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dsv3-edu-installed
# Offline-friendly: no news feed, no update check (workshops run without internet).
LAB_ARGS ?= --no-browser --ip=127.0.0.1 --port=8888 $(if $(filter 0,$(shell id -u)),--allow-root) \
            --LabApp.news_url= --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
# One BLAS thread per process: deterministic numbers and no oversubscription on 2 cores.
NB_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 IPYKERNEL_CELL_NAME='<IPY-INPUT>' PYTHONHASHSEED=0 PYTHONPATH=.ci
NBVAL := --nbval --nbval-current-env --nbval-sanitize-with .ci/nbval_sanitize.cfg --nbval-cell-timeout=300 \
         -p nbtiming -p no:cacheprovider
XDIST ?= -n 2 --dist loadscope

.PHONY: lab test lint unit nbval notebooks bench lock clean install

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c .ci/constraints.txt -e '.[lab,dev]'
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (dsv3-edu)" >/dev/null
	$(BIN)/jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements" >/dev/null 2>&1
	touch $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(LAB_ARGS) --notebook-dir=notebooks

test: lint unit nbval

lint: $(STAMP)
	$(BIN)/ruff check dsv3_edu tests notebooks .ci

unit: $(STAMP)
	$(NB_ENV) $(BIN)/python -m pytest $(or $(T),tests) $(XDIST) -q

nbval: $(STAMP)
	$(NB_ENV) $(BIN)/python -m pytest $(or $(NB),notebooks) $(NBVAL) $(XDIST) -q

# `make nbval NB=notebooks/03_mla.ipynb` checks one lesson; `make unit T=tests/test_config.py` one test file.
# Re-record every notebook's outputs the way CI checks them (same env, same versions).
notebooks: $(STAMP)
	$(NB_ENV) $(BIN)/python .ci/record_notebooks.py $(NB)

bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m dsv3_edu.bench all

# Re-pin every version after changing dependencies (then re-record: make notebooks).
lock: $(STAMP)
	( echo "# Pinned versions for the course environment (make lab / make test install with -c this file)."; \
	  echo "# Re-generate with: make lock   (recorded notebook outputs depend on these versions)"; \
	  $(BIN)/python -m pip freeze --exclude-editable | sed 's/+cpu$$//' ) > .ci/constraints.txt

clean:
	rm -rf $(VENV)
