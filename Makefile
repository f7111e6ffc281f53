# outbox-relay. `make help` lists the targets.

SHELL       := /bin/bash
GO          ?= go
# The version and revision stamped into bin/outbox-relay, from git when the
# tree is a checkout; outside one (a tarball) both stay empty and the binary
# reports what the Go toolchain recorded, or "devel".
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION    ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS     := -s -w -X main.version=$(VERSION) -X main.revision=$(REVISION)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
IMAGE       ?= outbox-relay:$(VERSION)

.PHONY: help build demo run test test-faults lint bench services clean image

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/outbox-relay and bin/outbox-demo
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/outbox-relay ./cmd/outbox-relay
	CGO_ENABLED=0 $(GO) build -trimpath -o bin/outbox-demo ./cmd/outbox-demo

demo: build services ## run the relay with a demo producer and consumers, then check what arrived
	bin/outbox-demo -relay bin/outbox-relay

run: build services ## migrate and run the relay against OUTBOX_* (local servers by default)
	bin/outbox-relay migrate
	bin/outbox-relay run

test: services ## every test, race detector on, against local PostgreSQL and RabbitMQ, then the fault suite
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) test-faults

test-faults: services ## the fault-injection suite alone (restarts the broker: runs by itself, one test at a time)
	@mkdir -p bin
	$(GO) test -race -tags faults -p 1 -count=1 -timeout 15m -v ./internal/faults/ > bin/faults.log 2>&1; rc=$$?; \
	  grep -E '^(FAULT|--- |ok|FAIL|PASS)' bin/faults.log; \
	  if [ $$rc -ne 0 ]; then echo "--- fault suite failed; the end of bin/faults.log:"; tail -n 300 bin/faults.log; fi; exit $$rc

lint: ## gofmt, go vet, staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

bench: build services ## measure drain, latency across rates, writers' cost and memory against the local servers (sizes: BENCH_FLAGS)
	$(GO) run ./cmd/outbox-bench -relay bin/outbox-relay -plot bin/rates.png $(BENCH_FLAGS)

image: ## build the container image outbox-relay:VERSION with docker (IMAGE=name:tag, PLATFORM=linux/arm64)
	@command -v docker >/dev/null 2>&1 || { echo "make image: docker not found on PATH; install Docker (or build the Dockerfile with another builder)" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: docker cannot reach a Docker engine (docker info failed); start it or set DOCKER_HOST" >&2; exit 1; }
	docker build $(if $(PLATFORM),--platform $(PLATFORM)) --build-arg VERSION=$(VERSION) --build-arg REVISION=$(REVISION) -t $(IMAGE) .

services: ## install and start PostgreSQL and RabbitMQ if needed
	@.ci/services

clean: ## remove build output
	rm -rf bin
