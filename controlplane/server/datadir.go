package server

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/droverhq/drover/internal/atomicfile"
)

// Data dir errors.
var (
	// ErrDataDirName means the data dir belongs to a server of another
	// name. Raft knows a server by its name, so such a server would find
	// itself in no configuration and wait for ever.
	ErrDataDirName = errors.New("data dir belongs to another server")
)

// nameFile is the file in the data dir that records the name of the
// server the data dir belongs to.
const nameFile = "server-name"

// claimDataDir records the server's name in the data dir at its first
// start and refuses a data dir started under another name. A data dir
// written before the name was recorded is claimed by whoever starts it
// next.
func claimDataDir(dir, name string) error {
	path := filepath.Join(dir, nameFile)
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		if err := atomicfile.Write(path, []byte(name+"\n"), 0o600); err != nil {
			return fmt.Errorf("record the server name in the data dir: %w", err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("read the data dir's server name: %w", err)
	}
	if owner := strings.TrimSpace(string(b)); owner != name {
		return fmt.Errorf("%w: %s holds the Raft log of server %q, not %q; "+
			"start it with --name %s, or give server %q a data dir of its own",
			ErrDataDirName, dir, owner, name, owner, name)
	}
	return nil
}
