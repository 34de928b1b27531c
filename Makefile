# Drover's build. `make help` lists the targets.
GO        ?= go
TOOL      := $(GO) tool -modfile=tools/go.mod
BIN       := bin
PKGS      := ./...
# Keep `make test` within a few minutes on a 2-core machine: the long tier
# (many more leader kills, crash loops) runs with `make test-long`.
TESTFLAGS ?= -short -race -timeout 15m

# The version, commit and tree state `drover version` and `drover-agent
# version` print (internal/buildinfo). Without tags the version is 0.1.0-dev.
BUILDINFO := github.com/droverhq/drover/internal/buildinfo
VERSION   ?= $(shell git describe --tags --match 'v*' --dirty 2>/dev/null || echo 0.1.0-dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null)
MODIFIED  ?= $(shell test -n "$$(git status --porcelain --untracked-files=no 2>/dev/null)" && echo true)
LDFLAGS   := -X $(BUILDINFO).version=$(VERSION) -X $(BUILDINFO).commit=$(COMMIT) -X $(BUILDINFO).modified=$(MODIFIED)

# go-nvml's cgo code includes NVIDIA's nvml.h, which marks many functions
# deprecated: compiling it prints about 150 lines of warnings that bury real
# output. A dependency's #cgo flags cannot be changed from here, so the build
# turns that one warning off for every C compile (the rest stay on).
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

# The example model is a module of its own (gonum stays out of the
# product's dependencies); its tests make their own data.
DIGITS    := examples/digits

.PHONY: help build build-static test test-scale test-long lint fmt vet staticcheck proto proto-check bench dev sample-model scenarios-docker clean

help: ## Show this help.
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-18s %s\n", $$1, $$2}'

build: ## Build drover, drover-agent and the ONNX runtime drover-onnx into bin/.
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/drover ./cmd/drover-agent ./cmd/drover-onnx

build-static: ## Build a static, stripped drover for FROM-scratch images.
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w $(LDFLAGS)' -o $(BIN)/drover-static ./cmd/drover

# The ONNX runtime's conformance tests (agent/runtime/onnx) run the ONNX
# project's backend tests from Debian's libonnx-testdata
# (apt-get install libonnx-testdata): skipped without it, failed under CI=true.
test: ## Unit tests, in-process scenarios (short tier), race detector on.
	$(GO) test $(TESTFLAGS) $(PKGS)
	cd $(DIGITS) && $(GO) test $(TESTFLAGS) ./...

test-scale: ## Tests that need the machine to themselves: the 300-member site gossip pool.
	$(GO) test -count=1 -run TestPoolAtScale -timeout 5m ./agent/

test-long: ## The long tier: more kills, more crash iterations.
	$(GO) test -race -timeout 60m $(PKGS)
	cd $(DIGITS) && $(GO) test -race -timeout 10m ./...

lint: fmt vet staticcheck proto-check ## gofmt, go vet, staticcheck, generated code up to date.

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)
	cd bench && $(GO) vet ./...
	cd $(DIGITS) && $(GO) vet ./...

staticcheck:
	$(TOOL) staticcheck $(PKGS)
	cd $(DIGITS) && $(GO) tool -modfile=../../tools/go.mod staticcheck ./...

proto: ## Regenerate protobuf and Connect code from proto/, and the ONNX schema's Go types.
	$(TOOL) buf generate
	$(TOOL) buf generate agent/runtime/onnx/onnxpb --template agent/runtime/onnx/onnxpb/buf.gen.yaml

proto-check: ## Fail when the checked-in generated code is stale.
	DROVER_PROTO_CHECK=1 $(GO) test -count=1 -run TestGeneratedCodeIsCurrent ./proto/... ./agent/runtime/onnx/onnxpb/

bench: ## Benchmarks with their baselines in the same run (see docs/performance.md).
	cd bench && $(GO) test -run=NONE -bench=. -benchtime=3s -timeout 30m ./...
	# Chunking and hashing beside hashing alone; the chunk-size study (fixed work).
	$(GO) test -run=NONE -bench=ChunkAndHash -cpu=1 ./artifact/
	$(GO) test -run=NONE -bench=ChunkSize -benchtime=1x ./artifact/
	# What checking a call costs beside the whole call, in the same run.
	$(GO) test -run=NONE -bench=Authorization -benchmem ./controlplane/server/
	# An agent's pull beside bare QUIC and HTTPS/TCP, on loopback and over
	# an emulated 100 ms, 500 Mbit/s link; the emulator's own ceiling.
	$(GO) test -run=NONE -bench=Pull -benchtime=1x -timeout 10m ./controlplane/server/
	$(GO) test -run=NONE -bench='RelayCapacity|QUICOverLink' -benchtime=1x ./internal/linkemu/
	# Agents of one site pulling at once, peer-to-peer on and off: origin bytes.
	$(GO) test -run=NONE -bench=FanOut -benchtime=1x ./agent/peer/
	# The rollout controller: Raft writes per rollout, and one step's cost.
	$(GO) test -run=TestRaftWritesPerRollout -bench=Step -benchmem -v ./controlplane/rollout/
	# Convergence: deploy apply until 100 agents serve the new version, beside
	# pulling the same amount alone, in the same run (one iteration).
	$(GO) test -run=NONE -bench=Convergence -benchtime=1x -timeout 40m ./scenarios/
	# Telemetry sketches: cost per observation (one and two goroutines), and
	# merging 10,000 agent profiles beside exact raw samples and histograms.
	$(GO) test -run=NONE -bench='Add|Record' -cpu=1,2 ./internal/sketch/
	$(GO) test -run=NONE -bench=Merge10k -benchtime=3x -cpu=1 ./internal/sketch/
	# The agent's telemetry spool: bytes on disk per hour and per day offline.
	$(GO) test -run=NONE -bench=SpoolOffline -benchtime=1x ./agent/telemetry/
	# The ONNX engine: the example model and a small CNN (against gonnx in bench/ above).
	$(GO) test -run=NONE -bench='HelloClassifier|CNN|RealConvNet' -benchtime=2s ./agent/runtime/onnx/
	$(GO) test -run=NONE -bench=Serve -benchtime=3s ./agent/runtime/onnx/serve/
	# Bytes a push moves for a real model whose classifier head was retrained.
	cd $(DIGITS) && $(GO) test -run=NONE -bench=Delta -benchtime=1x .
	# Each of these does a fixed amount of work (20 kills, 1000 writes) in one iteration.
	$(GO) test -run=NONE -bench=. -benchtime=1x -timeout 30m ./scenarios/process/

# Built, then run as make's own child rather than under `go run`, which
# reports a program's exit on a signal as a failure: Ctrl-C ends with
# drover's clean stop (exit 0) and no make error.
dev: build ## Run a single-server control plane and 3 local agents (drover dev; flags in DEVFLAGS).
	$(BIN)/drover dev $(DEVFLAGS)

# Needs the digits data set, which Debian's python3-sklearn ships; nothing
# else in this Makefile does.
sample-model: ## Regenerate cli/sample/hello-classifier (model.onnx, reference.json, card) with examples/digits, and its reference data set.
	cd $(DIGITS) && $(GO) run . -name hello-classifier -hidden 32 -epochs 30 -seed 1 -out ../../cli/sample/hello-classifier
	# The reference data set: the digits data set under the names the agent
	# observes (input[0..63], and the digit as the output's argmax).
	{ printf 'input[%d],' $$(seq 0 63); echo 'out:probabilities.argmax'; zcat scenarios/testdata/digits.csv.gz; } \
		| gzip -9n > cli/sample/hello-classifier-reference.csv.gz

scenarios-docker: ## Container scenarios: 3 servers and agents under docker kill / disconnect; agents pulling a model and rolling to a new version while the leader is killed.
	bash deploy/docker/scenarios.sh

clean:
	rm -rf $(BIN)
