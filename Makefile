# Modelgate: `make run` installs and runs everything on the embedded default (SQLite, a filesystem
# broker, artifacts under var/); `make test` installs and runs the whole suite on PostgreSQL and Redis.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/node_modules/.bin:$(PATH)

TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/modelgate
TEST_BROKER_URL ?= redis://127.0.0.1:6379/15

.PHONY: install static-vendor run test docs-screenshots lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/python requirements/lock.txt client/pyproject.toml
	$(BIN)/pip install --quiet -r requirements/lock.txt
	$(BIN)/pip install --quiet --no-deps -e client
	touch $@

# The TF.js parity check runs in Node with @tensorflow/tfjs (pure JS): installed from the lock file,
# with the lineage graph's browser libraries (cytoscape, cytoscape-dagre).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# Those browser libraries, copied into static/vendor/ (gitignored copies; no CDN).
static-vendor: node_modules/.installed
	sh scripts/vendor_static.sh

install: $(VENV)/.installed node_modules/.installed static-vendor

run: install
	$(BIN)/python manage.py migrate --noinput
	$(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/honcho start -f Procfile.embedded

test: install
	DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) $(BIN)/python -m pytest $(PYTEST_ARGS)

# The README's pictures (docs/images/), taken by the browser tests; a plain test run leaves them alone.
docs-screenshots: install
	MODELGATE_DOCS_SCREENSHOTS=1 DATABASE_URL=$(TEST_DATABASE_URL) CELERY_BROKER_URL=$(TEST_BROKER_URL) \
		$(BIN)/python -m pytest -m browser -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf var staticfiles
