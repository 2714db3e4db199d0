# dsv3-edu: two commands do all the set-up.
#   make lab    create .venv if missing, install, start JupyterLab on notebooks/
#   make test   lint, unit tests, then strict nbval over every notebook
# Both install only when pyproject.toml or .ci/constraints.txt changed.
# For workshops and maintainers:
#   make wheelhouse     download every pinned wheel into wheelhouse/ (then lab/test install with no network)
#   make browser-test   every lesson in JupyterLab in headless chromium: run, move every widget, screenshot
#   make site           static HTML site of the recorded lessons in build/site/ (opens from file://)
#   make answers        every lesson with its exercises solved, executed, in build/answers/

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

# PyTorch: on Linux x86_64 PyPI's torch is the CUDA build (several GB of nvidia-* wheels the course never
# uses); PyTorch's CPU index has the CPU-only build (about 190 MB). macOS and Windows wheels on PyPI are CPU-only.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell grep -i '^torch==' .ci/constraints.txt)
CPU_TORCH := $(filter Linux-x86_64,$(shell uname -s)-$(shell uname -m))
# Offline classroom: once `make wheelhouse` has finished (it writes wheelhouse/wheelhouse.txt last), every
# install below takes its wheels from wheelhouse/ and never touches the network.
WHEELHOUSE ?= wheelhouse
BUILD_PIN ?= setuptools==84.2.1
PIP_FROM := $(if $(wildcard $(WHEELHOUSE)/wheelhouse.txt),--no-index --find-links $(WHEELHOUSE))
# Installs the CPU-only torch first with $(1)'s pip (then the main install finds torch satisfied);
# nothing to do with a wheelhouse (it holds the CPU build) or off Linux x86_64.
define cpu_torch
$(if $(and $(CPU_TORCH),$(if $(PIP_FROM),,yes)),$(1) -m pip install --quiet --no-deps --index-url $(TORCH_INDEX) \
	'$(TORCH_PIN)' || echo "** $(TORCH_INDEX) not reachable: pip takes torch from PyPI (on Linux the CUDA build: several GB)")
endef
# Maintainer tools (Sphinx for `make site`, Playwright for `make browser-test`) live in their own venv,
# pinned in .ci/constraints-tools.txt, so the course's environment (.venv) does not grow.
TOOLS_VENV ?= .venv-tools
TOOLS := $(TOOLS_VENV)/bin/python
CHROMIUM ?= /usr/bin/chromium

.PHONY: lab test lint unit nbval notebooks bench lock clean install wheelhouse site browser-test answers core lock-tools colab

install: $(STAMP)

$(STAMP): pyproject.toml .ci/constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(call cpu_torch,$(BIN)/python)
	$(BIN)/python -m pip install --quiet $(PIP_FROM) -c .ci/constraints.txt -e '.[lab,dev]'
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

# Every pinned wheel of .ci/constraints.txt (the course) and .ci/constraints-tools.txt (site, browser test),
# for this platform and Python, plus the build backend. Copy the folder to USB sticks or serve it on a LAN.
wheelhouse:
	mkdir -p $(WHEELHOUSE)
	rm -f $(WHEELHOUSE)/wheelhouse.txt
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(WHEELHOUSE) \
	    $(if $(CPU_TORCH),--index-url $(TORCH_INDEX)) '$(TORCH_PIN)'
	grep -hv -e '^#' -e '^torch==' .ci/constraints.txt .ci/constraints-tools.txt | sort -u > $(WHEELHOUSE)/requirements.txt
	echo '$(BUILD_PIN)' >> $(WHEELHOUSE)/requirements.txt
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: -d $(WHEELHOUSE) -r $(WHEELHOUSE)/requirements.txt
	$(PYTHON) .ci/wheelhouse_summary.py $(WHEELHOUSE)

$(TOOLS_VENV)/.%-installed: pyproject.toml .ci/constraints.txt .ci/constraints-tools.txt
	test -x $(TOOLS) || $(PYTHON) -m venv $(TOOLS_VENV)
	$(PYTHON) .ci/extra_requirements.py $* > $(TOOLS_VENV)/$*-requirements.txt
	$(TOOLS) -m pip install --quiet $(PIP_FROM) -c .ci/constraints.txt -c .ci/constraints-tools.txt -r $(TOOLS_VENV)/$*-requirements.txt
	touch $@

site: $(TOOLS_VENV)/.site-installed
	$(TOOLS) .ci/build_site.py build/site
	$(TOOLS) .ci/check_site.py build/site

browser-test: $(STAMP) $(TOOLS_VENV)/.browser-installed
	$(TOOLS) .ci/browser_test.py --chromium $(CHROMIUM) --jupyter $(BIN)/jupyter $(NB)

answers: $(STAMP)
	$(NB_ENV) $(BIN)/python .ci/answers.py $(NB)

# Each lesson without its cells tagged deep-dive runs on its own (and the tags and banners are in place).
core: $(STAMP)
	$(NB_ENV) $(BIN)/python .ci/core_route.py $(NB)

# Once the course has a public GitHub repository: the Colab install cell in every lesson, the Colab and Binder
# links in the README, the guide's tables (one more core cell per lesson), then every lesson re-recorded.
colab: $(STAMP)
	$(if $(REPO_URL),,$(error give the course's public repository: make colab REPO_URL=https://github.com/OWNER/NAME))
	$(BIN)/python .ci/colab_cell.py --repo '$(REPO_URL)'
	PYTHONPATH=.ci $(BIN)/python .ci/lesson_minutes.py --write
	$(MAKE) notebooks

# Re-pin the tools' venv after changing the site or browser extras.
lock-tools: $(TOOLS_VENV)/.site-installed $(TOOLS_VENV)/.browser-installed
	( echo "# Pinned versions for the maintainer tools (make site, make browser-test) in $(TOOLS_VENV), installed with"; \
	  echo "# -c .ci/constraints.txt too, so the packages both share have one version. Re-generate with: make lock-tools"; \
	  $(TOOLS) -m pip freeze ) > .ci/constraints-tools.txt

clean:
	rm -rf $(VENV) $(TOOLS_VENV) build
