package artifact

import "errors"

// The errors this package returns wrap one or more of these, so callers
// branch with errors.Is and never on the message; the message names the
// file, chunk or key at fault.
var (
	// ErrInvalidManifest: a manifest breaks a rule of the format (see
	// ValidateManifest), or its bytes do not decode. Nothing of it may be
	// fetched or written.
	ErrInvalidManifest = errors.New("invalid manifest")
	// ErrTooLarge: a tree or manifest is over a Limits bound. Also wraps
	// ErrInvalidManifest when a received manifest is the one too large.
	ErrTooLarge = errors.New("over the artifact limits")

	// ErrUnsigned: a signed manifest carries no signature at all.
	ErrUnsigned = errors.New("manifest is not signed")
	// ErrUnknownKey: every signature is by a key the verifier does not
	// trust, or a trusted key's id does not match the key.
	ErrUnknownKey = errors.New("manifest is not signed by a trusted key")
	// ErrBadSignature: a trusted key's signature does not verify, and no
	// other trusted key's does: the bytes are not what the key signed.
	ErrBadSignature = errors.New("manifest signature does not verify")

	// ErrSymlink: a tree to publish holds a symbolic link. Links could
	// point anywhere on the publisher's machine; copy the target in.
	ErrSymlink = errors.New("symbolic link")
	// ErrSpecialFile: a tree to publish holds a device, socket, pipe or
	// other file that is neither a regular file nor a directory.
	ErrSpecialFile = errors.New("not a regular file or directory")
	// ErrEscapesRoot: a path is absolute or has a ".." component, so it
	// would land outside the artifact's directory.
	ErrEscapesRoot = errors.New("path escapes the artifact root")
	// ErrBadPath: a path is not valid UTF-8, holds control, format or
	// other unprintable characters or a backslash, has empty or "."
	// components, is too long, or collides with another path.
	ErrBadPath = errors.New("unusable path")
	// ErrEmptyTree: a tree to publish holds no regular file.
	ErrEmptyTree = errors.New("no files to publish")
	// ErrFileChanged: a file changed while it was being chunked, or
	// between chunking and a later read of one of its chunks.
	ErrFileChanged = errors.New("file changed while being read")

	// ErrChunkCorrupt: bytes served for a chunk do not have its digest or
	// its size. The source of that chunk (a cache, a peer) is bad.
	ErrChunkCorrupt = errors.New("chunk does not match the manifest")
)
