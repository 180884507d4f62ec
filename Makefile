# surpdb: `make help` lists the targets.
.DEFAULT_GOAL := help
PY ?= python3

.PHONY: help install test test-rust test-py lint fmt bench fuzz demo

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: ## build and install the package (release build of the extension)
	$(PY) -m pip install .

test: ## install test dependencies and run every test (Rust, then Python)
	$(PY) -m pip install ".[test]"
	cargo test -p surpd --release
	$(PY) -m pytest

test-rust: ## Rust unit and integration tests only
	cargo test -p surpd --release

test-py: ## Python tests only (against the installed package)
	$(PY) -m pytest

lint: ## rustfmt, clippy -D warnings, ruff
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	$(PY) -m ruff check python tests benchmarks

fmt: ## format Rust and Python
	cargo fmt --all
	$(PY) -m ruff format python tests benchmarks

bench: ## speed suite, page, hub, restart, record-store, Django and hit-ratio benchmarks beside their anchors (starts redis, memcached)
	$(PY) -m pip install ".[bench]"
	$(PY) benchmarks/speed.py
	$(PY) benchmarks/linkrdr_bench.py
	$(PY) benchmarks/hub_bench.py
	$(PY) benchmarks/restart_bench.py
	$(PY) benchmarks/records_bench.py --compact
	$(PY) benchmarks/django_bench.py
	$(PY) benchmarks/tier_bench.py
	$(PY) -m pip install libcachesim && $(PY) benchmarks/hitratio.py --requests 1000000

fuzz: ## a short cargo-fuzz pass of every target (SECONDS_EACH=600 for longer)
	bash fuzz/run.sh

demo: ## start a daemon on the default directory, write and read from two processes
	$(PY) -m pip install .
	surpdb demo
