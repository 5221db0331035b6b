# agentgate — a few commands do all the set-up on a fresh Debian machine with the Rust toolchain:
#   make demo   every promise on this machine, no provider key: a stand-in model, an MCP server
#               and a sign-in page behind the gateway, an OpenAI Agents SDK agent (conf/demo.yaml)
#   make run    build and start the gateway on conf/agentgate.yaml
#   make test   the whole test suite (rustfmt and clippy first, then unit, config checks,
#               integration with real TLS and SDKs)

SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python
BIN := target/debug/agentgate
CONFIG ?= conf/agentgate.yaml

.PHONY: demo run test build deps test-deps venv soak unit check-conf integration fmt lint clean-state bench bench-smoke bench-deps eval-masking

## Install the Debian packages BoringSSL's build and the test suite need, when missing.
deps:
	@need=""; \
	command -v cmake >/dev/null || need="$$need cmake"; \
	command -v clang >/dev/null || need="$$need clang"; \
	ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || need="$$need libclang-dev"; \
	python3 -m venv --help >/dev/null 2>&1 || need="$$need python3 python3-venv"; \
	command -v npm >/dev/null || need="$$need nodejs npm"; \
	if [ -n "$$need" ]; then \
	  echo "installing Debian packages:$$need"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$need >/dev/null; \
	fi

## What only the tests need: network namespaces and iptables (the egress-lock test), curl, and
## a browser for the web console test, and PostgreSQL (the shared store's tests start their own).
test-deps:
	@need=""; \
	command -v curl >/dev/null || need="$$need curl"; \
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || need="$$need iproute2"; \
	command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || need="$$need iptables"; \
	[ -x /usr/bin/chromium ] || need="$$need chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need="$$need postgresql"; \
	command -v redis-server >/dev/null || need="$$need redis-server"; \
	if [ -n "$$need" ]; then \
	  echo "installing Debian packages:$$need"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$need >/dev/null; \
	fi

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

$(VENV)/.bench: $(VENV)/.installed bench/requirements.txt
	$(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	touch $@

## The load generators and the reference proxy, from Debian.
bench-deps:
	@need=""; \
	command -v wrk >/dev/null || need="$$need wrk"; \
	command -v h2load >/dev/null || need="$$need nghttp2-client"; \
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need="$$need nginx-light"; \
	if [ -n "$$need" ]; then \
	  echo "installing Debian packages:$$need"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$need >/dev/null; \
	fi

build: deps
	$(CARGO) build --locked --bins --examples

run: build
	@if [ -z "$$OPENAI_API_KEY" ]; then \
	  echo "note: OPENAI_API_KEY is not set; using a placeholder (upstream calls will answer 401)."; \
	fi
	@mkdir -p var
	@if [ ! -s var/dev-token.sha256 ]; then ./$(BIN) token create --name local-dev --groups dev --write var/dev-token; fi
	@echo "agents: OPENAI_BASE_URL=https://127.0.0.1:8443/v1 SSL_CERT_FILE=var/tls/ca.pem OPENAI_API_KEY=\$$(cat var/dev-token)"
	OPENAI_API_KEY="$${OPENAI_API_KEY:-sk-placeholder-set-OPENAI_API_KEY}" ./$(BIN) run --config $(CONFIG)

unit: deps
	$(CARGO) test --locked

## conf/demo.yaml names files demo/run.py makes (a CA, tokens): checked whole, with them in place.
check-conf: build venv
	@for f in conf/*.yaml; do [ $$f = conf/demo.yaml ] || ./$(BIN) check --skip-secrets --config $$f || exit 1; done
	@$(PY) demo/run.py --check-config

## A real OpenID provider (oidc-provider from npm) for the end-to-end identity test.
tests/oidc/node_modules/.installed: tests/oidc/package.json tests/oidc/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/oidc
	touch $@

## playwright-core (npm) drives Debian's chromium for the web console test.
tests/console/node_modules/.installed: tests/console/package.json tests/console/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/console
	touch $@

## The official MCP reference server (server-everything) and the TypeScript SDK client (npm) for
## tests/test_mcp_reference.py.
tests/mcp_js/node_modules/.installed: tests/mcp_js/package.json tests/mcp_js/package-lock.json
	npm ci --silent --no-audit --no-fund --prefix tests/mcp_js
	touch $@

## The first ten minutes (demo/run.py): everything on loopback in a temporary directory, removed at
## the end (also on Ctrl-C). DEMO_ARGS=--auto-approve approves the held call itself; see --help.
demo: build venv tests/oidc/node_modules/.installed
	$(PY) demo/run.py $(DEMO_ARGS)

integration: build venv test-deps tests/oidc/node_modules/.installed tests/console/node_modules/.installed tests/mcp_js/node_modules/.installed
	cd tests && ../$(PY) -m pytest -q

## Portkey's gateway from npm, for the side-by-side (the bench skips it if npm is missing).
bench/portkey/node_modules/.installed: bench/portkey/package.json bench/portkey/package-lock.json
	@if command -v npm >/dev/null; then npm ci --silent --prefix bench/portkey && touch $@; \
	 else echo "npm not found: the benchmark will skip Portkey"; fi

## Side-by-side benchmark (release build): writes bench/results/<date>.md and .png.
## BASELINE=path/to/agentgate runs another build's passthrough and full policy beside this one's.
## LiteLLM's proxy for the side-by-side, in a venv of its own (its pins are not the tests').
bench/litellm/.venv/.installed: bench/litellm/requirements.txt
	python3 -m venv bench/litellm/.venv
	bench/litellm/.venv/bin/pip install -q --disable-pip-version-check -r bench/litellm/requirements.txt
	touch $@

bench: deps bench-deps $(VENV)/.bench bench/portkey/node_modules/.installed bench/litellm/.venv/.installed
	$(CARGO) build --release --locked --bins --examples
	$(PY) bench/run.py $(if $(BASELINE),--baseline $(BASELINE))
	$(PY) bench/approvals.py
	$(PY) bench/record.py

## The masking evaluation (src/mask/eval.rs) at full size, release build: recall per detector,
## context, encoding and split, early emission, false positives on benign traffic; writes
## bench/results/eval-masking.md. `cargo test` runs it small and fails on a missed target.
eval-masking: deps
	$(CARGO) run --release --locked --example eval_masking

## The same harness for seconds, on the debug build, so it cannot rot (part of make test).
bench-smoke: build bench-deps $(VENV)/.bench
	$(PY) bench/run.py --smoke --profile debug --out bench/work/smoke
	$(PY) bench/approvals.py --smoke --profile debug --out bench/work/smoke

## Load and soak for SOAK_SECONDS (default 10 minutes): mixed traffic, client aborts, upstream
## resets, reloads; then crashes, file descriptors, memory, accounting and records are checked.
SOAK_SECONDS ?= 600
soak: build venv
	$(PY) tests/soak.py --seconds $(SOAK_SECONDS)

## Formatting, clippy and the import graph's layers (ARCHITECTURE.md) first: they fail before
## the long suites start (a sub-make, so they come first under `make -j` too).
test: lint
	$(MAKE) --no-print-directory unit check-conf bench-smoke integration

fmt:
	$(CARGO) fmt

lint: deps
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets --locked -- -D warnings
	python3 tools/import_graph.py --check

clean-state:
	rm -rf var
