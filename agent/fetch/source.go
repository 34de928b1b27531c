// Package fetch is the agent's pull engine and chunk cache: it fetches
// the chunks of a verified manifest that the agent lacks from any number
// of sources, checks each against its digest, keeps them in an on-disk
// content-addressed cache that survives restarts, and assembles a version
// directory from that cache in one atomic step. Store builds on them: it
// verifies a version's manifest against the cluster's keys and the node's
// trust record, pulls it, and keeps each model's current and previous
// version.
package fetch

import (
	"context"
	"io"

	"github.com/droverhq/drover/artifact"
)

// Source serves chunks by digest: a control-plane server over the agent's
// connection, or a peer on the same site. This package does not know how
// a source talks.
//
// A source may fail or return wrong bytes; Pull checks every chunk and
// stops using a source that served a corrupt one. A source that does not
// hold a chunk and knows it at once returns an error wrapping ErrDecline:
// Pull then asks another source straight away, and holds the refusal
// against nobody. Chunk is called from
// several goroutines at once, up to Options.InFlight in total across all
// sources, and must honour ctx: reads from the returned body must end soon
// after ctx is done.
type Source interface {
	// Name identifies the source in Stats and errors.
	Name() string
	// Chunk returns the body of the chunk d, which the manifest says is
	// size bytes long. The caller closes it.
	Chunk(ctx context.Context, d artifact.Digest, size int64) (io.ReadCloser, error)
}

// Prioritized is a Source that says how early Pull asks it, such as a
// site's peers, whose bytes cost the control plane nothing. Pull sends
// each chunk to the sources of the highest priority first (the least
// loaded of them) and to the others only once those failed or declined
// it. A Source that is not Prioritized has priority 0.
type Prioritized interface {
	Source
	Priority() int
}

// priority returns src's priority.
func priority(src Source) int {
	if p, ok := src.(Prioritized); ok {
		return p.Priority()
	}
	return 0
}
