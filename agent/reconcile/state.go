package reconcile

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/droverhq/drover/internal/atomicfile"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// stateFormat is the version of the state file's layout; a file of
// another format is refused rather than misread.
const stateFormat = 1

// durable is what survives the agent: the desired state as last received,
// and what each deployment last served well.
type durable struct {
	// Assignments are the last assignments received (valid ones), by
	// deployment; received is false until the first Update.
	assignments map[string]*droverv1.Assignment
	received    bool
	// good holds, per deployment, the last assignment that became healthy
	// and the version it replaced.
	good map[string]goodRecord
}

type goodRecord struct {
	asg      *droverv1.Assignment
	previous uint64
}

// stateFile is the JSON layout of the state file. Assignments are written
// with protojson so a person can read the file, and so fields added to
// Assignment later survive.
type stateFile struct {
	Format      int                        `json:"format"`
	Saved       time.Time                  `json:"saved"`
	Received    bool                       `json:"received"`
	Assignments []json.RawMessage          `json:"assignments"`
	LastGood    map[string]savedDeployment `json:"last_good,omitempty"`
}

type savedDeployment struct {
	Assignment json.RawMessage `json:"assignment"`
	// Previous is the version the last good one replaced, kept on disk
	// for a rollback.
	Previous uint64 `json:"previous,omitempty"`
}

func statePath(dir string) string { return filepath.Join(dir, DefaultStateFile) }

// loadState reads the state file in dir; a missing file is an empty state.
func loadState(dir string) (durable, error) {
	st := durable{assignments: make(map[string]*droverv1.Assignment), good: make(map[string]goodRecord)}
	path := statePath(dir)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("read reconciler state: %w", err)
	}
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%s: %s: %w (remove the file to start over; the node then serves nothing until a server sends its assignments)",
			path, fmt.Sprintf(format, args...), ErrStateCorrupt)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		return st, corrupt("%v", err)
	}
	if f.Format != stateFormat {
		return st, corrupt("format %d, this agent reads format %d", f.Format, stateFormat)
	}
	opts := protojson.UnmarshalOptions{DiscardUnknown: true}
	for i, raw := range f.Assignments {
		a := new(droverv1.Assignment)
		if err := opts.Unmarshal(raw, a); err != nil {
			return st, corrupt("assignment %d: %v", i, err)
		}
		if err := checkAssignment(a); err != nil {
			return st, corrupt("assignment %d: %v", i, err)
		}
		st.assignments[a.GetDeployment()] = a
	}
	st.received = f.Received
	for name, sd := range f.LastGood {
		a := new(droverv1.Assignment)
		if err := opts.Unmarshal(sd.Assignment, a); err != nil {
			return st, corrupt("last good version of %s: %v", name, err)
		}
		if err := checkAssignment(a); err != nil || a.GetDeployment() != name {
			return st, corrupt("last good version of %s: not a valid assignment of that deployment", name)
		}
		st.good[name] = goodRecord{asg: a, previous: sd.Previous}
	}
	return st, nil
}

// save writes st to dir's state file atomically.
func (st durable) save(dir string, now time.Time) error {
	f := stateFile{Format: stateFormat, Saved: now.UTC(), Received: st.received, LastGood: make(map[string]savedDeployment, len(st.good))}
	names := make([]string, 0, len(st.assignments))
	for name := range st.assignments {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b, err := protojson.Marshal(st.assignments[name])
		if err != nil {
			return fmt.Errorf("save reconciler state: %w", err)
		}
		f.Assignments = append(f.Assignments, b)
	}
	for name, g := range st.good {
		b, err := protojson.Marshal(g.asg)
		if err != nil {
			return fmt.Errorf("save reconciler state: %w", err)
		}
		f.LastGood[name] = savedDeployment{Assignment: b, Previous: g.previous}
	}
	b, err := json.MarshalIndent(&f, "", "  ")
	if err != nil {
		return fmt.Errorf("save reconciler state: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("save reconciler state: %w", err)
	}
	if err := atomicfile.Write(statePath(dir), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("save reconciler state: %w", err)
	}
	return nil
}

// checkAssignment refuses an assignment the reconciler cannot act on.
func checkAssignment(a *droverv1.Assignment) error {
	name := a.GetDeployment()
	switch {
	case name == "":
		return errors.New("no deployment name")
	case name == "." || name == ".." || strings.ContainsAny(name, "/?#%\\ \t\r\n\x00"):
		return fmt.Errorf("deployment name %q cannot be a URL path segment", name)
	case a.GetModel() == "":
		return fmt.Errorf("deployment %s: no model", name)
	case a.GetVersion() == 0:
		return fmt.Errorf("deployment %s: version 0 (versions count from 1)", name)
	}
	return nil
}
