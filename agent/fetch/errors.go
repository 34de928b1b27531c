package fetch

import "errors"

// The errors this package returns wrap one of these, so callers branch
// with errors.Is; the message names the chunk, source or sizes at fault.
// Bytes that do not match their digest wrap artifact.ErrChunkCorrupt.
var (
	// ErrNoSpace: the disk lacks room for the chunks to fetch plus the
	// assembled version. Nothing was fetched or written.
	ErrNoSpace = errors.New("not enough free disk space")
	// ErrNoSource: a chunk could not be fetched from any source, because
	// every try failed or every source was dropped for serving corrupt
	// bytes.
	ErrNoSource = errors.New("no source could serve a chunk")
	// ErrDecline: a source does not hold a chunk, or will not serve it
	// now, and says so before sending any bytes. Sources return it;
	// Pull asks another source at once.
	ErrDecline = errors.New("source declined the chunk")
)
