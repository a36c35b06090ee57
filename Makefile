# One command vets and tests every module of the workspace with the race
# detector: `make test`. Tests that need a service (PostgreSQL, MariaDB,
# Redis, RabbitMQ, NATS) skip with a message when it is absent, unless
# BATUTA_REQUIRE_SERVICES=1 (CI sets it), which makes absence a failure.

MODULES := $(shell go list -m -f '{{.Dir}}')
GOTEST_FLAGS ?= -race -count=1 -timeout 12m

# Tools, pinned; `make tools` installs them (CI does) through the Go module
# proxy into GOBIN, and again whenever the pinned version changes.
GOLANGCI_LINT_VERSION := v2.15.0
GOVULNCHECK_VERSION := v1.9.0
# The OSV files govulncheck reads when vuln.go.dev cannot be reached
# (see .ci/vulncheck); bump it to see newer advisories.
VULNDB_VERSION := v0.0.0-20261105234957-e22db6528018
GOBIN := $(or $(shell go env GOBIN),$(shell go env GOPATH)/bin)
GOLANGCI_LINT := $(GOBIN)/golangci-lint
GOVULNCHECK := $(GOBIN)/govulncheck

.PHONY: test vet fmt-check mod-check lint vulncheck tools bench example

test: fmt-check mod-check vet
	@set -e; for m in $(MODULES); do \
		echo "== go test $$m"; \
		(cd $$m && go test $(GOTEST_FLAGS) ./...); \
	done

vet:
	@set -e; for m in $(MODULES); do \
		echo "== go vet $$m"; \
		(cd $$m && go vet ./...); \
	done

# golangci-lint (.golangci.yml) in every module of the workspace.
lint: tools
	@set -e; for m in $(MODULES); do \
		echo "== golangci-lint $$m"; \
		(cd $$m && $(GOLANGCI_LINT) run ./...); \
	done

# govulncheck in every module; see .ci/vulncheck for the database it uses
# and what fails.
vulncheck: tools
	@GOVULNCHECK=$(GOVULNCHECK) VULNDB_VERSION=$(VULNDB_VERSION) .ci/vulncheck

tools:
	@$(GOLANGCI_LINT) version 2>/dev/null | grep -q 'version $(GOLANGCI_LINT_VERSION:v%=%) ' || \
		{ echo "== go install golangci-lint@$(GOLANGCI_LINT_VERSION)"; \
		  GOWORK=off go install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION); }
	@$(GOVULNCHECK) -version 2>/dev/null | grep -q 'govulncheck@$(GOVULNCHECK_VERSION)$$' || \
		{ echo "== go install govulncheck@$(GOVULNCHECK_VERSION)"; \
		  GOWORK=off go install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION); }

# Every module must be consumable on its own: tidy, and building and vetting
# without the workspace (GOWORK=off), as a user's build sees it.
mod-check:
	@set -e; for m in $(MODULES); do \
		echo "== mod-check $$m"; \
		(cd $$m && GOWORK=off go mod tidy -diff && GOWORK=off go build ./... && GOWORK=off go vet ./...); \
	done
	@.ci/modcheck

fmt-check:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

example:
	go run ./examples/orders

# Core benchmarks (not part of CI): medians need -count 6 and benchstat.
bench:
	go test -run '^$$' -bench . -benchmem -count 6 . | tee bench-core.txt
