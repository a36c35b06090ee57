# One command vets and tests every module of the workspace with the race
# detector: `make test`. Tests that need a service (PostgreSQL, MariaDB,
# Redis, RabbitMQ, NATS) skip with a message when it is absent, unless
# BATUTA_REQUIRE_SERVICES=1 (CI sets it), which makes absence a failure.

MODULES := $(shell go list -m -f '{{.Dir}}')
GOTEST_FLAGS ?= -race -count=1 -timeout 12m

.PHONY: test vet fmt-check mod-check bench example

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

# Every module must be consumable on its own: tidy, and building and vetting
# without the workspace (GOWORK=off), as a user's build sees it.
mod-check:
	@set -e; for m in $(MODULES); do \
		echo "== mod-check $$m"; \
		(cd $$m && GOWORK=off go mod tidy -diff && GOWORK=off go build ./... && GOWORK=off go vet ./...); \
	done

fmt-check:
	@out=$$(gofmt -l $(MODULES)); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

example:
	go run ./examples/orders

# Core benchmarks (not part of CI): medians need -count 6 and benchstat.
bench:
	go test -run '^$$' -bench . -benchmem -count 6 . | tee bench-core.txt
