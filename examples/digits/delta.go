package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/droverhq/drover/artifact"
)

// delta is what a new version of a model directory costs against an old
// one.
type delta struct {
	Size        int64 // bytes of the new version
	Moved       int64 // bytes of the new version's chunks that the old one lacks: what a push uploads and an agent pulls
	Changed     int64 // bytes of the new version that differ from the old one's at the same offset of the same file
	Chunks      int   // distinct chunks of the new version
	MovedChunks int   // of those, how many the old version lacks
}

func (d delta) String() string {
	pct := func(n int64) float64 { return 100 * float64(n) / float64(d.Size) }
	return fmt.Sprintf("size %d bytes; moved %d bytes (%.2f%%, %d of %d chunks); changed %d bytes (%.2f%%)",
		d.Size, d.Moved, pct(d.Moved), d.MovedChunks, d.Chunks, d.Changed, pct(d.Changed))
}

// measureDelta chunks both directories as drover model push does, with
// chunker's sizes (zero: the artifact package's default, a 1 MiB
// average), and compares them.
func measureDelta(ctx context.Context, oldDir, newDir string, chunker artifact.ChunkerParams) (delta, error) {
	opts := artifact.BuildOptions{Chunker: chunker}
	_, oldRefs, err := artifact.BuildManifest(ctx, oldDir, opts)
	if err != nil {
		return delta{}, err
	}
	newManifest, newRefs, err := artifact.BuildManifest(ctx, newDir, opts)
	if err != nil {
		return delta{}, err
	}
	have := make(map[artifact.Digest]bool, len(oldRefs))
	for _, r := range oldRefs {
		have[r.Digest] = true
	}
	d := delta{Size: int64(newManifest.GetTotalSize()), Chunks: len(newRefs)}
	for _, r := range newRefs {
		if !have[r.Digest] {
			d.Moved += int64(r.Size)
			d.MovedChunks++
		}
	}
	for _, f := range newManifest.GetFiles() {
		n, err := changedBytes(filepath.Join(oldDir, f.GetPath()), filepath.Join(newDir, f.GetPath()))
		if err != nil {
			return delta{}, err
		}
		d.Changed += n
	}
	return d, nil
}

// changedBytes counts the bytes of newPath that differ from oldPath's at
// the same offset; bytes past oldPath's end, or all of them when oldPath
// does not exist, count as changed.
func changedBytes(oldPath, newPath string) (int64, error) {
	nf, err := os.Open(newPath)
	if err != nil {
		return 0, err
	}
	defer nf.Close()
	of, err := os.Open(oldPath)
	if errors.Is(err, fs.ErrNotExist) {
		info, err := nf.Stat()
		if err != nil {
			return 0, err
		}
		return info.Size(), nil
	}
	if err != nil {
		return 0, err
	}
	defer of.Close()
	nr, or := bufio.NewReaderSize(nf, 1<<20), bufio.NewReaderSize(of, 1<<20)
	var changed int64
	oldDone := false
	for {
		nb, err := nr.ReadByte()
		if err == io.EOF {
			return changed, nil
		}
		if err != nil {
			return 0, fmt.Errorf("read %s: %w", newPath, err)
		}
		if oldDone {
			changed++
			continue
		}
		ob, err := or.ReadByte()
		switch {
		case err == io.EOF:
			oldDone = true
			changed++
		case err != nil:
			return 0, fmt.Errorf("read %s: %w", oldPath, err)
		case ob != nb:
			changed++
		}
	}
}
