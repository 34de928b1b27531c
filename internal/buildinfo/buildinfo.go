// Package buildinfo says which build of Drover is running: its version, the
// commit it was built from, and the Go toolchain, for `version` commands,
// logs and what servers and agents report about themselves.
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set at link time by the Makefile, with
//
//	-ldflags "-X github.com/droverhq/drover/internal/buildinfo.version=…"
//
// (and likewise commit, and modified as "true" for a tree with
// uncommitted changes), and never written at run time. A plain `go build`
// leaves them empty and Read falls back to what the toolchain stamped into
// the binary.
var (
	version  string
	commit   string
	modified string
)

// DevVersion is the version of a build that says nothing better about
// itself: neither the Makefile nor a module version set one.
const DevVersion = "0.1.0-dev"

// Info describes one build.
type Info struct {
	// Version is the release version: the Makefile's (from git describe),
	// else the module version `go install …@vX` records, else DevVersion.
	Version string
	// Commit is the VCS revision the binary was built from, "" if unknown.
	Commit string
	// Modified reports uncommitted changes in the tree it was built from.
	Modified bool
	// GoVersion is the toolchain that built the binary, such as "go1.26.0".
	GoVersion string
}

// Read returns this binary's build information.
func Read() Info {
	bi, _ := debug.ReadBuildInfo()
	return read(bi, Info{Version: version, Commit: commit, Modified: modified == "true"})
}

// read combines the link-time values in linked with the toolchain's stamp;
// bi may be nil (a binary built without module support).
func read(bi *debug.BuildInfo, linked Info) Info {
	info := linked
	info.GoVersion = runtime.Version()
	if bi == nil {
		if info.Version == "" {
			info.Version = DevVersion
		}
		return info
	}
	if bi.GoVersion != "" {
		info.GoVersion = bi.GoVersion
	}
	// The toolchain's VCS stamp is the more reliable commit; the linked one
	// covers builds with -buildvcs=false or from a tree without .git.
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			info.Commit = s.Value
		case "vcs.modified":
			info.Modified = s.Value == "true"
		}
	}
	if info.Version == "" {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			info.Version = v
		} else {
			info.Version = DevVersion
		}
	}
	return info
}

// Version is Read().Version.
func Version() string { return Read().Version }

// String renders the build on one line, as `version` commands print it:
// "0.1.0-dev (commit 1a2b3c4d5e6f, modified; go1.26.0 linux/amd64)".
func (i Info) String() string {
	c := "commit unknown"
	if i.Commit != "" {
		c = "commit " + shortCommit(i.Commit)
		if i.Modified {
			c += ", modified"
		}
	}
	return fmt.Sprintf("%s (%s; %s %s/%s)", i.Version, c, i.GoVersion, runtime.GOOS, runtime.GOARCH)
}

// shortCommit shortens a full hash to 12 characters, as git log does for
// large repositories, so it stays unambiguous and readable.
func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
