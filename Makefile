# outbox-relay — every target wraps cargo and scripts/. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help
help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build every binary (debug)
	cargo build --locked --workspace --bins

.PHONY: run
run: ## Start a local replica set, the Event Grid receiver and `handler serve`; Ctrl-C stops them
	scripts/run.sh

.PHONY: services
services: ## Only a replica set (port 7073) and the receiver (7072), and a local.settings.json for `func start`; Ctrl-C stops them
	scripts/services.sh

.PHONY: test
test: ## Install what is needed, start a real replica set, run every test
	scripts/test.sh

.PHONY: chaos
chaos: ## Chaos suite at full scale (kills, restarts, outages); counts in target/chaos/report.json
	CHAOS_SCALE=full scripts/chaos.sh

.PHONY: bench
bench: ## Benchmark writes, lifecycle, drain, relays and faults; JSON in target/bench/
	scripts/bench.sh $(ARGS)

.PHONY: fmt
fmt: ## Format the code
	cargo fmt --all

.PHONY: lint
lint: ## Clippy with warnings as errors; no import circle between modules
	cargo clippy --locked --workspace --all-targets --all-features -- -D warnings
	cargo test --locked -p devstack --test import_circles

.PHONY: doc
doc: ## Build the API docs with warnings as errors
	RUSTDOCFLAGS="-D warnings" cargo doc --locked --workspace --no-deps

.PHONY: check
check: ## Every gate: fmt, clippy, docs, tests
	cargo fmt --all --check
	$(MAKE) lint
	$(MAKE) doc
	$(MAKE) test

.PHONY: package
package: ## Build the release binary into the app root as ./handler (ready for func start / publish)
	scripts/package.sh
