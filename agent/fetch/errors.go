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

	// A Store refuses a manifest with one of these before it fetches a
	// chunk, and activates nothing. An unknown signing key wraps
	// artifact.ErrUnknownKey instead.

	// ErrManifestTooLarge: the signed manifest is over the store's
	// limit.
	ErrManifestTooLarge = errors.New("manifest over the size limit")
	// ErrManifestMismatch: the manifest is not the one the control plane
	// recorded for the version, or was signed for another model.
	ErrManifestMismatch = errors.New("manifest is not the version's")
	// ErrManifestConflict: the node trusted another manifest for the
	// same version before.
	ErrManifestConflict = errors.New("manifest conflicts with the one trusted for the version")
	// ErrManifestReplay: the manifest's create time is out of order with
	// the versions the node trusts already: older than a lower version's,
	// as a replayed old manifest is, or newer than a higher one's.
	ErrManifestReplay = errors.New("manifest is out of order with the versions trusted")
)
