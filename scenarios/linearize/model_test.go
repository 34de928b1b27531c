package linearize

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

// op builds one operation of a hand-written history.
func op(client int, in Input, call, ret int64, out Output) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Return: ret, Output: out}
}

func TestStep(t *testing.T) {
	two := State{Versions: 2}.withAlias("prod", 1)
	tests := []struct {
		name  string
		s     State
		in    Input
		out   Output
		ok    bool
		after State
	}{
		{"create numbers next", two, CreateVersion(""), Output{Version: 3}, true, State{Versions: 3}.withAlias("prod", 1)},
		{"create reuses number", two, CreateVersion(""), Output{Version: 2}, false, two},
		{"create skips number", two, CreateVersion(""), Output{Version: 4}, false, two},
		{"create refused", two, CreateVersion(""), Output{NotFound: true}, false, two},
		{"create unknown", two, CreateVersion("x"), Output{Unknown: true}, true, State{Versions: 3}.withAlias("prod", 1)},
		{"set moves alias", two, SetAlias("prod", 2), Output{Previous: 1}, true, State{Versions: 2}.withAlias("prod", 2)},
		{"set new alias", two, SetAlias("canary", 2), Output{}, true, two.withAlias("canary", 2)},
		{"set wrong previous", two, SetAlias("prod", 2), Output{Previous: 2}, false, two},
		{"set missing version", two, SetAlias("prod", 3), Output{}, false, two},
		{"set refused missing version", two, SetAlias("prod", 3), Output{NotFound: true}, true, two},
		{"set refused version 0", two, SetAlias("prod", 0), Output{NotFound: true}, true, two},
		{"set refused existing version", two, SetAlias("prod", 2), Output{NotFound: true}, false, two},
		{"set unknown existing", two, SetAlias("prod", 2), Output{Unknown: true}, true, two.withAlias("prod", 2)},
		{"set unknown missing", two, SetAlias("prod", 9), Output{Unknown: true}, true, two},
		{"get alias", two, GetAlias("prod"), Output{Version: 1}, true, two},
		{"get alias wrong", two, GetAlias("prod"), Output{Version: 2}, false, two},
		{"get alias unset", two, GetAlias("canary"), Output{NotFound: true}, true, two},
		{"get alias unset but answered", two, GetAlias("canary"), Output{Version: 1}, false, two},
		{"get alias set but not found", two, GetAlias("prod"), Output{NotFound: true}, false, two},
		{"latest", two, LatestVersion(), Output{Version: 2}, true, two},
		{"latest stale", two, LatestVersion(), Output{Version: 1}, false, two},
		{"latest none", State{}, LatestVersion(), Output{NotFound: true}, true, State{}},
		{"latest none as zero", State{}, LatestVersion(), Output{}, true, State{}},
		{"latest not found with versions", two, LatestVersion(), Output{NotFound: true}, false, two},
		{"zero op", two, Input{}, Output{}, false, two},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.s
			ok, after := Step(tt.s, tt.in, tt.out)
			if ok != tt.ok {
				t.Fatalf("Step(%v, %v, %v) ok = %v, want %v", tt.s, tt.in, tt.out, ok, tt.ok)
			}
			if ok && after != tt.after {
				t.Errorf("state after = %v, want %v", after, tt.after)
			}
			if tt.s != before {
				t.Errorf("Step modified its input state")
			}
		})
	}
}

func TestStateAliases(t *testing.T) {
	s := State{}.withAlias("prod", 3).withAlias("canary", 12).withAlias("prod", 4)
	got := s.Aliases()
	if len(got) != 2 || got["prod"] != 4 || got["canary"] != 12 {
		t.Fatalf("Aliases() = %v", got)
	}
	// Same map, built in another order, is the same state.
	if other := (State{}).withAlias("canary", 12).withAlias("prod", 4); other != s {
		t.Errorf("states differ: %v and %v", s, other)
	}
	if s.alias("pro") != 0 || s.alias("prod") != 4 {
		t.Errorf("alias lookup matched a prefix or missed")
	}
}

func TestModelAcceptsConcurrentHistory(t *testing.T) {
	history := []porcupine.Operation{
		// Two concurrent creates may take their numbers in either order.
		op(0, CreateVersion("a"), 0, 10, Output{Version: 2}),
		op(1, CreateVersion("b"), 1, 9, Output{Version: 1}),
		// A read concurrent with the first alias set may miss it...
		op(2, SetAlias("prod", 1), 11, 20, Output{}),
		op(0, GetAlias("prod"), 12, 13, Output{NotFound: true}),
		// ...but one after it must not.
		op(1, GetAlias("prod"), 21, 22, Output{Version: 1}),
		// Reads concurrent with a move see the old or the new target, and
		// once one saw the new target, later ones do too.
		op(2, SetAlias("prod", 2), 23, 30, Output{Previous: 1}),
		op(0, GetAlias("prod"), 24, 25, Output{Version: 1}),
		op(1, GetAlias("prod"), 24, 26, Output{Version: 2}),
		op(0, GetAlias("prod"), 27, 28, Output{Version: 2}),
		op(0, LatestVersion(), 31, 32, Output{Version: 2}),
		op(1, SetAlias("canary", 5), 33, 34, Output{NotFound: true}),
		op(2, GetAlias("canary"), 33, 35, Output{NotFound: true}),
	}
	if res := porcupine.CheckOperationsTimeout(Model(), history, 0); res != porcupine.Ok {
		t.Fatalf("check = %s, want Ok", res)
	}
}

func TestModelRejects(t *testing.T) {
	base := []porcupine.Operation{
		op(0, CreateVersion(""), 0, 1, Output{Version: 1}),
		op(0, CreateVersion(""), 2, 3, Output{Version: 2}),
		op(0, SetAlias("prod", 1), 4, 5, Output{}),
	}
	tests := []struct {
		name    string
		history []porcupine.Operation
	}{
		{"stale read after acknowledged alias move", []porcupine.Operation{
			op(0, SetAlias("prod", 2), 10, 20, Output{Previous: 1}),
			op(1, GetAlias("prod"), 21, 22, Output{Version: 1}),
		}},
		{"read goes back in time during a move", []porcupine.Operation{
			op(0, SetAlias("prod", 2), 10, 20, Output{Previous: 1}),
			op(1, GetAlias("prod"), 11, 12, Output{Version: 2}),
			op(2, GetAlias("prod"), 13, 14, Output{Version: 1}),
		}},
		{"version number assigned twice", []porcupine.Operation{
			op(0, CreateVersion("a"), 10, 20, Output{Version: 3}),
			op(1, CreateVersion("b"), 11, 21, Output{Version: 3}),
		}},
		{"version number skipped", []porcupine.Operation{
			op(0, CreateVersion(""), 10, 20, Output{Version: 4}),
		}},
		{"stale latest version", []porcupine.Operation{
			op(0, CreateVersion(""), 10, 20, Output{Version: 3}),
			op(1, LatestVersion(), 21, 22, Output{Version: 2}),
		}},
		{"lost alias move seen in previous", []porcupine.Operation{
			op(0, SetAlias("prod", 2), 10, 20, Output{Previous: 1}),
			op(1, SetAlias("prod", 1), 21, 30, Output{Previous: 1}),
		}},
		{"alias set to a version refused as missing", []porcupine.Operation{
			op(0, SetAlias("canary", 2), 10, 20, Output{NotFound: true}),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			history := append(append([]porcupine.Operation{}, base...), tt.history...)
			if res := porcupine.CheckOperationsTimeout(Model(), history, 0); res != porcupine.Illegal {
				t.Fatalf("check = %s, want Illegal", res)
			}
		})
	}
}

func TestStrings(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{CreateVersion("w1-3").String(), "CreateVersion(w1-3)"},
		{CreateVersion("").String(), "CreateVersion()"},
		{SetAlias("prod", 3).String(), "SetAlias(prod, 3)"},
		{GetAlias("prod").String(), "GetAlias(prod)"},
		{LatestVersion().String(), "LatestVersion()"},
		{Output{Version: 3}.String(), "3"},
		{Output{Version: 3, Previous: 2}.String(), "3 (was 2)"},
		{Output{NotFound: true}.String(), "not found"},
		{Output{Unknown: true}.String(), "unknown"},
		{describe(SetAlias("prod", 3), Output{Previous: 2}), "SetAlias(prod, 3) -> ok (was 2)"},
		{describe(SetAlias("prod", 3), Output{}), "SetAlias(prod, 3) -> ok (new)"},
		{describe(SetAlias("prod", 3), Output{NotFound: true}), "SetAlias(prod, 3) -> not found"},
		{describe(GetAlias("prod"), Output{Version: 3}), "GetAlias(prod) -> 3"},
		{State{Versions: 2}.withAlias("prod", 1).String(), "versions=2 aliases={prod=1}"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
