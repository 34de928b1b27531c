package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	stamped := &debug.BuildInfo{
		GoVersion: "go1.26.0",
		Main:      debug.Module{Path: "github.com/droverhq/drover", Version: "v0.0.0-20260301120000-1a2b3c4d5e6f+dirty"},
		Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	unstamped := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/droverhq/drover", Version: "(devel)"}}
	installed := &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/droverhq/drover", Version: "v0.2.0"}}
	tests := []struct {
		name   string
		bi     *debug.BuildInfo
		linked Info
		want   Info
	}{
		{"make build: linked version, toolchain's commit", stamped, Info{Version: "v0.1.0-3-g1a2b3c4", Commit: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d"},
			Info{Version: "v0.1.0-3-g1a2b3c4", Commit: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d", Modified: true, GoVersion: "go1.26.0"}},
		{"make build with -buildvcs=false: linked commit", unstamped, Info{Version: "0.1.0-dev", Commit: "abc", Modified: true},
			Info{Version: "0.1.0-dev", Commit: "abc", Modified: true, GoVersion: "go1.26.0"}},
		{"plain go build: the module version the toolchain stamped", stamped, Info{},
			Info{Version: "v0.0.0-20260301120000-1a2b3c4d5e6f+dirty", Commit: "1a2b3c4d5e6f7a8b9c0d1a2b3c4d5e6f7a8b9c0d", Modified: true, GoVersion: "go1.26.0"}},
		{"go install @v0.2.0", installed, Info{}, Info{Version: "v0.2.0", GoVersion: "go1.26.0"}},
		{"nothing known", unstamped, Info{}, Info{Version: DevVersion, GoVersion: "go1.26.0"}},
		{"no build info", nil, Info{}, Info{Version: DevVersion, GoVersion: runtime.Version()}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := read(tt.bi, tt.linked); got != tt.want {
				t.Errorf("read = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestString(t *testing.T) {
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, tt := range []struct {
		in   Info
		want string
	}{
		{Info{Version: "v0.1.0", Commit: "1a2b3c4d5e6f7a8b9c0d", GoVersion: "go1.26.0"}, "v0.1.0 (commit 1a2b3c4d5e6f; go1.26.0 " + platform + ")"},
		{Info{Version: "v0.1.0", Commit: "1a2b3c4", Modified: true, GoVersion: "go1.26.0"}, "v0.1.0 (commit 1a2b3c4, modified; go1.26.0 " + platform + ")"},
		{Info{Version: DevVersion, GoVersion: "go1.26.0"}, DevVersion + " (commit unknown; go1.26.0 " + platform + ")"},
	} {
		if got := tt.in.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// The test binary itself has build information: Read never comes back
// without a version or toolchain.
func TestReadThisBinary(t *testing.T) {
	i := Read()
	if i.Version == "" || !strings.HasPrefix(i.GoVersion, "go") {
		t.Errorf("Read() = %+v", i)
	}
}
