# Everything starts from a fresh clone: the first target that needs it builds .venv/.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit redis rabbitmq bench soak clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,ops]'
	touch $(STAMP)

redis: $(STAMP)
	PYTHON=$(BIN)/python scripts/ensure-redis.sh

# The suite starts private RabbitMQ nodes; this only makes sure the server is installed.
rabbitmq:
	scripts/ensure-rabbitmq.sh

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) redis rabbitmq
	$(BIN)/python -m pytest -q --durations=25

test: lint typecheck unit

demo: $(STAMP) redis
	$(BIN)/python scripts/demo.py

# Every benchmark runs; the target fails when any of them missed one of its targets.
bench: $(STAMP) redis
	@failed=0; for b in bench/read_path.py bench/write_path.py bench/redaction.py bench/load.py; do \
		echo "== $$b"; $(BIN)/python $$b || failed=1; done; exit $$failed

# The long chaos soak (20,000 messages, a 60 s Zep outage; about 8 minutes).
# `make test` runs the short plan in tests/test_soak.py.
soak: $(STAMP) redis
	$(BIN)/python -m scripts.soak --plan long --report var/soak-report.json

clean:
	rm -rf $(VENV) var .mypy_cache .ruff_cache .pytest_cache
