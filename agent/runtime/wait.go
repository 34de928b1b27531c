package runtime

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// WaitHealthy waits until inst is healthy and returns its status. It fails
// when inst reaches a final state first (naming its last exit) or ctx
// ends. A crash-looping instance is still waited for: its restart policy
// may yet bring it up, and ctx bounds how long that may take.
func WaitHealthy(ctx context.Context, inst Instance) (Status, error) {
	for {
		changed := inst.Changed()
		s := inst.Status()
		switch {
		case s.State == StateHealthy:
			return s, nil
		case s.State.Final():
			return s, fmt.Errorf("wait for %s to be healthy: it is %s: %s", inst.ID(), s.State, describeExit(s))
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return s, fmt.Errorf("wait for %s to be healthy: %w (it is %s: %s)", inst.ID(), ctx.Err(), s.State, describeExit(s))
		}
	}
}

func describeExit(s Status) string {
	switch {
	case s.LastExit != nil:
		return s.LastExit.String()
	case s.LastProbeError != "":
		return s.LastProbeError
	}
	return "no exit yet"
}

// Set is the runtimes a node offers, by the name deployments use.
type Set map[string]Runtime

// NewSet indexes runtimes by Name; two with one name is an error.
func NewSet(runtimes ...Runtime) (Set, error) {
	s := Set{}
	for _, r := range runtimes {
		if _, dup := s[r.Name()]; dup {
			return nil, fmt.Errorf("runtime set: two runtimes named %q", r.Name())
		}
		s[r.Name()] = r
	}
	return s, nil
}

// Get returns the runtime called name, or an error naming those there are.
func (s Set) Get(name string) (Runtime, error) {
	if r, ok := s[name]; ok {
		return r, nil
	}
	have := slices.Sorted(maps.Keys(s))
	if len(have) == 0 {
		return nil, fmt.Errorf("runtime %q: this node offers no runtimes", name)
	}
	return nil, fmt.Errorf("runtime %q: this node offers %s", name, strings.Join(have, ", "))
}
