package reconcile

import (
	"os"

	"github.com/droverhq/drover/agent/fetch"
)

// StoreVersions is LocalVersions over the agent's version store: a
// version is local when it is the model's current or previous one in the
// store and its directory is there. Those are exactly the versions the
// store keeps, verified when they were pulled.
type StoreVersions struct {
	Store *fetch.Store
}

var _ LocalVersions = StoreVersions{}

// Local returns the directory of version of model if the store keeps it.
func (s StoreVersions) Local(model string, version uint64) (string, bool) {
	if s.Store == nil || version == 0 {
		return "", false
	}
	cur, okCur := s.Store.Current(model)
	prev, okPrev := s.Store.Previous(model)
	if !(okCur && cur.Version == version) && !(okPrev && prev.Version == version) {
		return "", false
	}
	dir := s.Store.VersionDir(model, version)
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return "", false
	}
	return dir, true
}
