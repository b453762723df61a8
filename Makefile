# Understudy Training Service. `make demo` runs one real training job end to end on this
# machine; `make test` runs every test. Both install what they need first.

SHELL := /bin/bash
.DEFAULT_GOAL := build

PULUMI_VERSION := v3.274.1
PROVIDER_VERSION := $(shell sed -n 's/^const Version = "\(.*\)"/\1/p' provider/version/version.go)
GO ?= go
BIN := $(CURDIR)/bin
DATA_DIR ?= $(CURDIR)/.understudy
# Root does not need sudo; anyone else does for the Debian packages.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

GO_SOURCES := $(shell find . -name '*.go' -not -path './tools/*' -not -path './build/*' 2>/dev/null) go.mod go.sum
RUNTIME_SOURCES := $(shell find trainer -type f -not -path '*/__pycache__/*' 2>/dev/null)
DASHBOARD_SOURCES := $(shell find dashboard/web -type f -not -path '*/node_modules/*' 2>/dev/null)

.PHONY: stacks destroy-stack plugin binaries build deps dashboard pyenv tiny-model test test-go test-python schemathesis demo bench bench-go bench-train bench-smoke bench-gpu clean lint emulators

## deps: Debian packages the service and its tests use (OpenSSH server and clients, curl;
## Node.js and npm for the dashboard's build and the Azure Storage emulator; Chromium for the
## dashboard's browser test; iproute2's ip and tc for the WAN download benchmark; PostgreSQL's
## server for the PostgreSQL store's tests, which run their own throwaway server).
deps:
	@if [ ! -x /usr/sbin/sshd ] || ! command -v ssh >/dev/null || ! command -v curl >/dev/null || ! command -v sftp >/dev/null; then \
	  echo "installing openssh-server, openssh-client, curl"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq openssh-server openssh-client curl >/dev/null; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  echo "installing nodejs, npm"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then \
	  echo "installing postgresql (its server binaries; no cluster is created or started)"; \
	  $(SUDO) mkdir -p /etc/postgresql-common/createcluster.d && \
	  echo "create_main_cluster = false" | $(SUDO) tee /etc/postgresql-common/createcluster.d/understudy.conf >/dev/null && \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if ! PATH="$$PATH:/usr/sbin:/sbin" command -v ip >/dev/null || ! PATH="$$PATH:/usr/sbin:/sbin" command -v tc >/dev/null; then \
	  echo "installing iproute2"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq iproute2 >/dev/null; \
	fi

## build: the service, the pinned Pulumi CLI and the in-repo provider plugin in bin/, and the
## plugin installed into the default data dir's PULUMI_HOME (serve also installs it where
## its own data dir needs it).
build: binaries plugin

binaries: $(BIN)/understudy-train $(BIN)/pulumi $(BIN)/pulumi-resource-understudy $(BIN)/understudy-fakecloud

$(BIN)/understudy-train: $(GO_SOURCES) $(RUNTIME_SOURCES) dashboard/dist/app.js
	$(GO) build -o $@ -ldflags "-X main.Version=$$(git describe --always --dirty 2>/dev/null || echo dev)" ./cmd/understudy-train

$(BIN)/pulumi-resource-understudy: $(GO_SOURCES)
	$(GO) build -o $@ ./cmd/pulumi-resource-understudy

## dashboard: the web dashboard's front-end (Preact and uPlot, bundled by esbuild, all
## pinned in dashboard/web/package-lock.json), built into dashboard/dist, which the binary
## embeds.
dashboard: dashboard/dist/app.js

dashboard/dist/app.js: $(DASHBOARD_SOURCES)
	cd dashboard/web && npm ci --no-audit --no-fund --loglevel=error && npm run build --silent

# The fake RunPod and Lambda Cloud APIs that the tests and `make demo PROVIDER=…` run
# against: real sshd machines behind the clouds' documented API shapes.
$(BIN)/understudy-fakecloud: $(GO_SOURCES)
	$(GO) build -o $@ ./cmd/understudy-fakecloud

# The Pulumi CLI is built from the Go module proxy at the pinned version (tools/pulumi);
# the version flag matters: the Automation API refuses a CLI without it.
$(BIN)/pulumi: tools/pulumi/go.mod tools/pulumi/go.sum
	cd tools/pulumi && $(GO) build -o $@ -ldflags "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$(PULUMI_VERSION)" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi
	@$@ version

## pyenv: the training runtime's Python environment, cached outside the clone.
pyenv:
	@scripts/pyenv.sh >/dev/null

PYTHON = $$($(CURDIR)/scripts/pyenv.sh)/bin/python

## emulators: the S3, GCS and Azure Blob Storage emulators (moto, fake-gcs-server, Azurite)
## that the storage tests run against, cached outside the clone.
emulators: deps
	@scripts/emulators.sh >/dev/null

## tiny-model: a tiny GPT-2-architecture model built locally at build/tiny-gpt2.
tiny-model: pyenv
	$(PYTHON) trainer/tools/make_tiny_model.py --data examples/sample-pairs.jsonl --out build/tiny-gpt2

build/tiny-gpt2/config.json: examples/sample-pairs.jsonl trainer/tools/make_tiny_model.py
	@$(MAKE) --no-print-directory tiny-model

## test: every Go and Python test.
test: deps dashboard build pyenv emulators schemathesis build/tiny-gpt2/config.json
	$(MAKE) --no-print-directory test-go test-python

## schemathesis: the OpenAPI fuzzer that e2e/openapi_fuzz_test.go runs against the live
## service, cached outside the clone.
schemathesis:
	@scripts/schemathesis.sh >/dev/null

test-go:
	UNDERSTUDY_BIN=$(BIN) UNDERSTUDY_LOCAL_PYTHON=$(PYTHON) UNDERSTUDY_TINY_MODEL=$(CURDIR)/build/tiny-gpt2 \
	  UNDERSTUDY_EMULATORS=$$($(CURDIR)/scripts/emulators.sh) UNDERSTUDY_SCHEMATHESIS=$$($(CURDIR)/scripts/schemathesis.sh) \
	  UNDERSTUDY_E2E_REQUIRED=1 $(GO) test -count=1 -timeout 30m ./...

test-python:
	$(PYTHON) -m pytest -q trainer/tests

## demo: one real training job end to end on the local provider; PROVIDER=runpod or
## PROVIDER=lambda runs it against the fake cloud (bin/understudy-fakecloud).
PROVIDER ?= local
demo: deps build pyenv build/tiny-gpt2/config.json
	UNDERSTUDY_LOCAL_PYTHON=$(PYTHON) PROVIDER=$(PROVIDER) scripts/demo.sh

## bench: control-plane overhead, weight download (loopback, and a WAN emulated with a network
## namespace and tc netem: needs root and a kernel with sch_netem, and fails where either is
## missing; UNDERSTUDY_WAN_DELAY=tun emulates the path with TUN devices and a delay line in
## user space instead, =proxy with a TCP relay) and concurrency benchmarks.
bench: deps build pyenv build/tiny-gpt2/config.json bench-go

bench-go:
	UNDERSTUDY_BIN=$(BIN) UNDERSTUDY_LOCAL_PYTHON=$(PYTHON) UNDERSTUDY_TINY_MODEL=$(CURDIR)/build/tiny-gpt2 \
	  $(GO) test -run '^$$' -bench . -benchtime 1x -timeout 90m ./sshrunner/ ./bench/

# The training benchmarks run in their own environment (scripts/benchenv.sh): the runtime's
# pins plus TRL, cached outside the clone, never mixed into the runtime's environment.
BENCH_PYTHON = $$($(CURDIR)/scripts/benchenv.sh)/bin/python

## bench-train: training throughput on this machine's CPU (tiny model): the runtime vs the
## Hugging Face Trainer and TRL SFTTrainer peers, median of 5 interleaved runs, and the
## packed-vs-alone and recompile checks.
bench-train:
	$(BENCH_PYTHON) trainer/bench/bench_train.py --mode cpu

## bench-smoke: the training benchmark's smoke test with all three contenders (TRL too), in
## the benchmark environment. (`make test` runs it without TRL, in the runtime's environment.)
bench-smoke:
	UNDERSTUDY_BENCH_ENV=1 $(BENCH_PYTHON) -m pytest -q trainer/tests/test_bench_smoke.py

## bench-gpu: on one GPU, the runtime vs both peers on a random-init 124M GPT-2 at seq 1024
## (tokens/s, MFU, median of 5 interleaved runs) and both checks in bf16; estimated at 6-7
## minutes on an H200 (not yet run on one). Results also in build/bench-gpu.json.
## UNDERSTUDY_TORCH_PYTHON=python3 runs it on the machine's own PyTorch instead of downloading
## the pinned one (UNDERSTUDY_WHEELS=DIR: the other packages from scripts/wheelhouse.sh's
## wheels, no network; docs/benchmarks-train.md).
bench-gpu:
	@mkdir -p build
	$(BENCH_PYTHON) trainer/bench/bench_train.py --mode gpu --json build/bench-gpu.json

## plugin: install the provider plugin into DATA_DIR's PULUMI_HOME (for operators' CLI too).
plugin: binaries
	@mkdir -p $(DATA_DIR) && chmod 700 $(DATA_DIR)
	PULUMI_HOME=$(DATA_DIR)/pulumi-home PULUMI_SKIP_UPDATE_CHECK=true $(BIN)/pulumi plugin install resource understudy $(PROVIDER_VERSION) -f $(BIN)/pulumi-resource-understudy --reinstall

# Operators: audit and destroy stacks with the pinned CLI against the backend the service
# uses: PULUMI_BACKEND_URL when set (as `serve --backend-url` reads it: s3://…, gs://…,
# azblob://… or Pulumi Cloud, credentials from the usual environment), else the data dir's
# file backend.
BACKEND_URL := $(if $(PULUMI_BACKEND_URL),$(PULUMI_BACKEND_URL),file://$(DATA_DIR)/pulumi)
OPERATOR_ENV = PULUMI_HOME=$(DATA_DIR)/pulumi-home PULUMI_BACKEND_URL='$(BACKEND_URL)' \
	PULUMI_CONFIG_PASSPHRASE_FILE=$(DATA_DIR)/pulumi-passphrase PULUMI_SKIP_UPDATE_CHECK=true

## stacks: list every job's stack (pulumi stack ls) in the service's backend.
stacks: $(BIN)/pulumi
	@case '$(BACKEND_URL)' in file://*) mkdir -p '$(patsubst file://%,%,$(BACKEND_URL))';; esac
	$(OPERATOR_ENV) $(BIN)/pulumi stack ls --all

## destroy-stack STACK=<train_id>: destroy and remove one stuck stack in the service's
## backend. Stacks of cloud providers need the provider's credentials in the environment
## (RUNPOD_API_KEY, LAMBDA_API_KEY or their *_FILE variants; AWS_*, GOOGLE_*, ARM_* for the
## AWS, GCP and Azure plugins, installed in DATA_DIR's PULUMI_HOME).
destroy-stack: plugin
	@[ -n "$(STACK)" ] || { echo "usage: make destroy-stack STACK=<train_id>"; exit 2; }
	$(OPERATOR_ENV) $(BIN)/pulumi destroy --stack $(STACK) --yes --non-interactive
	$(OPERATOR_ENV) $(BIN)/pulumi stack rm $(STACK) --yes --non-interactive

lint: dashboard
	gofmt -l $$(git ls-files '*.go')
	$(GO) vet ./...

clean:
	rm -rf bin build dashboard/web/node_modules dashboard/dist/index.html dashboard/dist/app.js dashboard/dist/app.css
