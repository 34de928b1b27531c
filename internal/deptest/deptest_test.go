// Package deptest enforces Drover's import rules: the layout in
// DESIGN.md only works if imports point down the list of folders.
package deptest

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/droverhq/drover"

type pkg struct {
	ImportPath string
	Imports    []string
	Deps       []string
}

func listPackages(t *testing.T, args ...string) []pkg {
	t.Helper()
	cmd := exec.Command("go", append([]string{"list", "-json"}, args...)...)
	cmd.Dir = "../.."
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var pkgs []pkg
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p pkg
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		pkgs = append(pkgs, p)
	}
	return pkgs
}

// area is the top-level folder of one of our packages.
func area(path string) string {
	rest := strings.TrimPrefix(path, module+"/")
	if i := strings.Index(rest, "/"); i >= 0 {
		return rest[:i]
	}
	return rest
}

func TestImportRules(t *testing.T) {
	// What each area may import from the module (besides itself).
	allowed := map[string][]string{
		"proto":    {},
		"internal": {"proto"},
		// The artifact format is shared by the CLI, the servers and the
		// agents, and linked into the agent: it stays a leaf.
		"artifact":     {"proto", "internal"},
		"hwprobe":      {"proto", "internal"},
		"controlplane": {"proto", "internal", "artifact"},
		"agent":        {"proto", "internal", "artifact", "hwprobe"},
		// drover dev runs agents in its own process.
		"cli":       {"proto", "internal", "artifact", "hwprobe", "controlplane", "agent"},
		"cmd":       {"proto", "internal", "artifact", "hwprobe", "controlplane", "agent", "cli"},
		"scenarios": {"proto", "internal", "artifact", "hwprobe", "controlplane", "agent", "cli"},
	}
	for _, p := range listPackages(t, "./...") {
		from := area(p.ImportPath)
		ok, known := allowed[from]
		if !known {
			t.Errorf("%s is in an unknown top-level folder %q: add it to DESIGN.md's layout and to this test", p.ImportPath, from)
			continue
		}
		for _, imp := range p.Imports {
			if !strings.HasPrefix(imp, module+"/") {
				continue
			}
			to := area(imp)
			if to == from {
				continue
			}
			permitted := false
			for _, a := range ok {
				permitted = permitted || a == to
			}
			if !permitted {
				t.Errorf("%s imports %s: %s may not import %s", p.ImportPath, imp, from, to)
			}
		}
	}
}

// The product never links the baseline stores used by benchmarks.
func TestBenchmarkBaselinesStayOut(t *testing.T) {
	for _, p := range listPackages(t, "-deps", "./cmd/...") {
		for _, bad := range []string{"github.com/hashicorp/raft-boltdb", "github.com/hashicorp/raft-wal", "go.etcd.io/bbolt", "github.com/boltdb/bolt"} {
			if strings.HasPrefix(p.ImportPath, bad) {
				t.Errorf("the product links %s: keep benchmark baselines in the bench module", p.ImportPath)
			}
		}
	}
}

// drover-agent runs on edge devices that pay for every megabyte: it must
// not link the control plane's consensus and storage, the server, the
// operator CLI, or test helpers.
func TestAgentBinaryStaysLean(t *testing.T) {
	forbidden := []string{
		"github.com/hashicorp/raft",
		"github.com/hashicorp/raft-boltdb",
		"github.com/cockroachdb/pebble",
		module + "/controlplane",
		module + "/cli",
		module + "/agent/agenttest",
		"testing",
		// Raft's logger adapter lives in the control plane; nothing in
		// the agent logs through hclog.
		"github.com/hashicorp/go-hclog",
		"github.com/fatih/color",
		// Runtimes run as child processes (DESIGN.md, Decisions): the
		// ONNX engine lives in drover-onnx, never in the agent.
		module + "/agent/runtime/onnx",
	}
	pkgs := listPackages(t, "-deps", "./cmd/drover-agent")
	if len(pkgs) == 0 {
		t.Fatal("go list -deps ./cmd/drover-agent listed nothing")
	}
	for _, p := range pkgs {
		for _, root := range forbidden {
			// A module path like pebble's carries a major version
			// ("…/pebble/v2"), so everything under root counts.
			if p.ImportPath == root || strings.HasPrefix(p.ImportPath, root+"/") {
				t.Errorf("drover-agent links %s: keep it out of the agent (see DESIGN.md, Layout)", p.ImportPath)
			}
		}
	}
}

// Faults reach servers only through interfaces they use anyway (a dial
// function, a listener wrapper), so neither binary links the fault network
// or the scenario harness that drives it.
func TestFaultInjectionStaysOutOfBinaries(t *testing.T) {
	forbidden := []string{module + "/internal/faultnet", module + "/scenarios"}
	for _, bin := range []string{"./cmd/drover", "./cmd/drover-agent"} {
		pkgs := listPackages(t, "-deps", bin)
		if len(pkgs) == 0 {
			t.Fatalf("go list -deps %s listed nothing", bin)
		}
		for _, p := range pkgs {
			for _, root := range forbidden {
				if p.ImportPath == root || strings.HasPrefix(p.ImportPath, root+"/") {
					t.Errorf("%s links %s: inject faults through server.Config's Dial and WrapListener from tests only", bin, p.ImportPath)
				}
			}
		}
	}
}

// The ONNX engine and its server live in the drover-onnx binary alone
// (DESIGN.md: runtimes run outside the agent's process). Only that binary
// and the engine's own packages import them; neither drover nor
// drover-agent links them.
func TestONNXEngineStaysInItsRuntime(t *testing.T) {
	engine := module + "/agent/runtime/onnx"
	inEngine := func(path string) bool { return path == engine || strings.HasPrefix(path, engine+"/") }
	for _, p := range listPackages(t, "./...") {
		if inEngine(p.ImportPath) || p.ImportPath == module+"/cmd/drover-onnx" {
			continue
		}
		for _, imp := range p.Imports {
			if inEngine(imp) {
				t.Errorf("%s imports %s: only cmd/drover-onnx may link the ONNX engine", p.ImportPath, imp)
			}
		}
	}
	for _, bin := range []string{"./cmd/drover", "./cmd/drover-agent"} {
		for _, p := range listPackages(t, "-deps", bin) {
			if inEngine(p.ImportPath) {
				t.Errorf("%s links %s: the ONNX engine runs in drover-onnx, a child process", bin, p.ImportPath)
			}
		}
	}
	found := false
	for _, p := range listPackages(t, "-deps", "./cmd/drover-onnx") {
		found = found || p.ImportPath == engine
		if p.ImportPath == "testing" || strings.HasPrefix(p.ImportPath, module+"/controlplane") {
			t.Errorf("drover-onnx links %s", p.ImportPath)
		}
	}
	if !found {
		t.Error("drover-onnx does not link the engine: the test lists the wrong package")
	}
}
