package artifact

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// BuildOptions says how BuildManifest cuts and describes a tree.
type BuildOptions struct {
	// Chunker is the chunking; zero means DefaultChunkerParams. A new
	// version of a model should use the previous version's parameters so
	// that unchanged bytes make the same chunks.
	Chunker ChunkerParams
	// Limits bound the tree; a zero field is no bound. Pass at most what
	// agents accept (DefaultLimits unless they were configured
	// otherwise). The total size and file count are checked before any
	// file is read.
	Limits Limits
	// Model and VersionLabel go into the manifest as they are; see the
	// Manifest message. Both are optional.
	Model        string
	VersionLabel string
	// CreateTime goes into the manifest unless it is zero. Leave it zero
	// for a manifest, and so a digest, that depends on the bytes alone.
	CreateTime time.Time
}

// ChunkRef says where BuildManifest found a chunk, so that an uploader can
// read it again later without chunking the file again: Size bytes of File
// from Offset. File is a path on the building machine, not in the
// manifest.
type ChunkRef struct {
	Digest Digest
	File   string
	Offset int64
	Size   int
}

// BuildManifest chunks the regular files under root (or root itself, when
// it is a file: the manifest then holds that one file under its base
// name) and returns the manifest and one ChunkRef per distinct chunk, in
// the order the chunks first appear. Files are read one at a time through
// one chunker, so memory stays at a few maximum-size chunks plus the
// manifest itself, however large the tree.
//
// The walk is sorted and follows nothing: it refuses, naming the path,
// a symbolic link anywhere under root (ErrSymlink), a device, socket or
// pipe (ErrSpecialFile), a name the manifest cannot hold (ErrBadPath,
// ErrEscapesRoot), a tree without files (ErrEmptyTree), a tree over
// opts.Limits (ErrTooLarge), and a file that changes while it is read
// (ErrFileChanged). Root itself may be a link; it is what the operator
// named. Empty directories are not kept.
func BuildManifest(ctx context.Context, root string, opts BuildOptions) (*droverv1.Manifest, []ChunkRef, error) {
	m, refs, err := buildManifest(ctx, root, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("build manifest of %s: %w", root, err)
	}
	return m, refs, nil
}

func buildManifest(ctx context.Context, root string, opts BuildOptions) (*droverv1.Manifest, []ChunkRef, error) {
	params := opts.Chunker
	if params == (ChunkerParams{}) {
		params = DefaultChunkerParams()
	}
	if err := params.Validate(); err != nil {
		return nil, nil, err
	}
	t, err := listTree(root)
	if err != nil {
		return nil, nil, err
	}
	defer t.close()
	if len(t.files) == 0 {
		return nil, nil, fmt.Errorf("%w: the directory holds no regular file", ErrEmptyTree)
	}
	if n := opts.Limits.MaxFiles; n > 0 && len(t.files) > n {
		return nil, nil, fmt.Errorf("%d files, over the limit of %d: %w", len(t.files), n, ErrTooLarge)
	}
	var total int64
	for _, f := range t.files {
		total += f.info.Size()
	}
	if n := opts.Limits.MaxTotalSize; n > 0 && total > n {
		return nil, nil, fmt.Errorf("%d bytes, over the limit of %d bytes: %w", total, n, ErrTooLarge)
	}

	m := &droverv1.Manifest{
		FormatVersion: FormatVersion,
		Chunker:       params.Proto(),
		TotalSize:     uint64(total),
		Model:         opts.Model,
		VersionLabel:  opts.VersionLabel,
	}
	if !opts.CreateTime.IsZero() {
		m.CreateTime = timestamppb.New(opts.CreateTime)
	}
	chunker, err := NewChunker(nil, params)
	if err != nil {
		return nil, nil, err
	}
	seen := make(map[Digest]bool)
	var refs []ChunkRef
	chunks := 0
	for _, f := range t.files {
		mf, err := t.chunkFile(ctx, f, chunker, func(r ChunkRef) {
			chunks++
			if !seen[r.Digest] {
				seen[r.Digest] = true
				refs = append(refs, r)
			}
		})
		if err != nil {
			return nil, nil, err
		}
		// Checked per file rather than at the end, so a tree that would
		// never fit is refused before all of it is read.
		if n := opts.Limits.MaxChunks; n > 0 && chunks > n {
			return nil, nil, fmt.Errorf("%d chunks, over the limit of %d: %w: use a larger average chunk size", chunks, n, ErrTooLarge)
		}
		m.Files = append(m.Files, mf)
	}
	if err := ValidateManifest(m, opts.Limits); err != nil {
		return nil, nil, err
	}
	return m, refs, nil
}

// tree is the list of regular files under a root, sorted by their path in
// the manifest.
type tree struct {
	root  *os.Root // nil when the root is a single file
	files []treeFile
}

type treeFile struct {
	rel  string      // path in the manifest
	path string      // path on this machine
	info fs.FileInfo // from the walk, not following links
}

func (t *tree) close() {
	if t.root != nil {
		t.root.Close()
	}
}

func listTree(root string) (*tree, error) {
	fi, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if fi.Mode().IsRegular() {
		rel := filepath.Base(root)
		if err := checkPath(rel); err != nil {
			return nil, fmt.Errorf("%s: %w", root, err)
		}
		return &tree{files: []treeFile{{rel: rel, path: root, info: fi}}}, nil
	}
	if !fi.IsDir() {
		return nil, fmt.Errorf("%s is a %s: %w", root, fileKind(fi.Mode()), ErrSpecialFile)
	}
	// The walk and every later open go through an os.Root, so a
	// directory swapped for a link during the walk cannot lead outside.
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, err
	}
	t := &tree{root: r}
	err = fs.WalkDir(r.FS(), ".", func(rel string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		typ := d.Type()
		switch {
		case typ&fs.ModeSymlink != 0:
			return fmt.Errorf("%q: %w: copy what it points to into the tree instead", rel, ErrSymlink)
		case !typ.IsDir() && !typ.IsRegular():
			return fmt.Errorf("%q is a %s: %w: remove it from the tree", rel, fileKind(typ), ErrSpecialFile)
		}
		if err := checkPath(rel); err != nil {
			return fmt.Errorf("%q: %w", rel, err)
		}
		if typ.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		path := filepath.Join(root, filepath.FromSlash(rel))
		t.files = append(t.files, treeFile{rel: rel, path: path, info: info})
		return nil
	})
	if err != nil {
		r.Close()
		return nil, err
	}
	// The walk visits "a/b" before "a-b" ('/' sorts after '-'); the
	// manifest sorts whole paths.
	slices.SortFunc(t.files, func(a, b treeFile) int { return cmp.Compare(a.rel, b.rel) })
	return t, nil
}

func fileKind(m fs.FileMode) string {
	switch {
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "device"
	default:
		return "special file"
	}
}

func (t *tree) open(f treeFile) (*os.File, error) {
	if t.root == nil {
		return os.Open(f.path)
	}
	return t.root.Open(f.rel)
}

// chunkFile cuts one file and reports each chunk to ref.
func (t *tree) chunkFile(ctx context.Context, f treeFile, c *Chunker, ref func(ChunkRef)) (*droverv1.ManifestFile, error) {
	file, err := t.open(f)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	changed := fmt.Errorf("%q: %w: publish again once nothing writes to it", f.rel, ErrFileChanged)
	st, err := file.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || !os.SameFile(st, f.info) || st.Size() != f.info.Size() {
		return nil, changed
	}
	mode := uint32(ModeRegular)
	if f.info.Mode().Perm()&0o111 != 0 {
		mode = ModeExecutable
	}
	mf := &droverv1.ManifestFile{Path: f.rel, Mode: mode, Size: uint64(f.info.Size())}
	c.Reset(file)
	var size int64
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		ch, err := c.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%q: %w", f.rel, err)
		}
		d := Sum(ch.Data)
		mf.Chunks = append(mf.Chunks, &droverv1.ManifestChunk{Digest: d[:], Size: uint32(ch.Len())})
		ref(ChunkRef{Digest: d, File: f.path, Offset: ch.Offset, Size: ch.Len()})
		size += int64(ch.Len())
	}
	if size != f.info.Size() {
		return nil, changed
	}
	return mf, nil
}

// ReadChunk reads the chunk ref points to into buf (grown when it is too
// small) and checks its digest, so a file changed since BuildManifest is
// caught before its bytes are uploaded under the old digest.
func ReadChunk(ref ChunkRef, buf []byte) ([]byte, error) {
	f, err := os.Open(ref.File)
	if err != nil {
		return nil, fmt.Errorf("read chunk %s: %w", ref.Digest, err)
	}
	defer f.Close()
	if cap(buf) < ref.Size {
		buf = make([]byte, ref.Size)
	}
	buf = buf[:ref.Size]
	if _, err := f.ReadAt(buf, ref.Offset); err != nil {
		if errors.Is(err, io.EOF) {
			err = ErrFileChanged
		}
		return nil, fmt.Errorf("read chunk %s from %s: %w", ref.Digest, ref.File, err)
	}
	if Sum(buf) != ref.Digest {
		return nil, fmt.Errorf("read chunk %s from %s at %d: %w: build the manifest again", ref.Digest, ref.File, ref.Offset, ErrFileChanged)
	}
	return buf, nil
}
