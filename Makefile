# The few commands everyone runs. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: build test lint fmt bench example deb

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

# The whole test suite: formatting, lints, unit, CLI and real-namespace tests.
test: lint
	$(CARGO) test --locked --workspace --all-targets

# The Debian package, target/debian/hermit_<version>_<arch>.deb (reproducible:
# see scripts/deb.sh).
deb:
	sh scripts/deb.sh

fmt:
	$(CARGO) fmt --all

bench: build
	sh benches/run-all.sh
