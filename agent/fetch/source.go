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
// stops using a source that served a corrupt one. Chunk is called from
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
