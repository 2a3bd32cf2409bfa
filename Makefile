# The few commands everyone runs. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: build test lint fmt bench example

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The whole test suite: formatting, lints, unit, CLI and real-namespace tests.
test: lint
	$(CARGO) test --locked --workspace --all-targets

fmt:
	$(CARGO) fmt --all

bench: build
	sh benches/run-all.sh
