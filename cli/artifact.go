package cli

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/artifact"
	"github.com/droverhq/drover/internal/names"
	"github.com/droverhq/drover/internal/sketch"
	"github.com/droverhq/drover/internal/sketch/parquetref"
	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

const (
	// uploadPiece is the most data one UploadChunks message carries, as
	// the protocol requires.
	uploadPiece = 1 << 20
	// uploadStreams is how many UploadChunks streams a push runs at once:
	// enough to overlap reading, hashing and the network, few enough not
	// to crowd the server.
	uploadStreams = 4
	// pullWindow is how many chunks a pull fetches ahead of the one being
	// written: the memory it holds is at most this many chunks.
	pullWindow = 8
	// maxArtifactMessage bounds an artifact response: the largest chunk
	// the format allows (64 MiB), with room for the message around it.
	maxArtifactMessage = 65 << 20
)

func newModelPushCommand(g *globals) *cobra.Command {
	var (
		model, cardFile, parent, dataset, alias, signKey, reference string
		metrics, tags                                               []string
		limitRate                                                   string
	)
	cmd := &cobra.Command{
		Use:   "push PATH --model NAME",
		Short: "Upload a model's files and register them as a new version",
		Long: `Upload the files of a model and register them as a new, immutable version.

PATH is a file or a directory. Every regular file under it is cut into
content-defined chunks (about 1 MiB each) and listed in a manifest; the
SHA-256 of the manifest is the version's artifact digest. Symbolic links,
devices, sockets and pipes are refused, as are names other systems cannot
hold, so that the version unpacks the same everywhere: copy a link's
target into the tree instead. Empty directories are not kept, and of a
file's mode only the executable bit is.

Only the chunks the cluster does not already have are sent, so a new
version that changes a few layers of a large model uploads little more
than those layers. The version exists only once every chunk is stored
durably on a quorum of servers; the cluster signs its manifest with the
cluster key. With --sign-key the manifest is signed here too, with an
operator's key registered with the cluster (drover key create): the
cluster checks that signature and keeps it beside its own. Nothing in
PATH may change while it is pushed.

An interrupted push (Ctrl-C, a lost connection, a restarted server) is
resumed by running the same command again: it sends only the chunks the
cluster still lacks. When the server taking the upload goes away mid-way,
push moves on to another server of the cluster by itself.

--limit-rate caps the upload (such as 20MiB, per second) so that a push
from a shared or metered link leaves room for everything else.

The rest documents the version, and cannot be added later:

  --card       the model card, Markdown, from a file (- reads stdin)
  --metric     evaluation results, NAME=NUMBER, repeatable
  --tag        free-form KEY=VALUE, repeatable
  --parent     lineage: the version this one was derived from
  --dataset    lineage: the training data, URI or URI@sha256:HEX
  --alias      point this alias at the new version once it exists
  --reference  a reference data set that drift is measured against: CSV
               with a header row, or Parquet; one column per feature,
               named as the agent observes it, "out:NAME" for an output
  --sign-key   sign the manifest with the private key in FILE

While uploading it shows progress on standard error when that is a
terminal. -o json prints the server's answer (FinishPushResponse).`,
		Example: `  drover model push ./resnet-50 --model resnet --card CARD.md \
    --metric top1=0.812 --parent 2 \
    --dataset s3://data/imagenet-2024@sha256:5d41402abc4b2a76b9719d911017c592ae0d6b4a3f0e5c1d2e8f7a6b5c4d3e2f \
    --alias canary

  # One file:
  drover model push model.onnx --model resnet

  # The new version's number, for a script:
  drover model push ./out --model resnet -o json | jq -r .version.version`,
		Args: exactArgs("PATH"),
		RunE: func(cmd *cobra.Command, args []string) error {
			rate, err := parseRate(limitRate)
			if err != nil {
				return usageErr(cmd, fmt.Errorf("--limit-rate %s: %w", limitRate, err))
			}
			req, err := buildFinishPush(cmd, g.stdin, pushFlags{
				model: model, cardFile: cardFile, parent: parent, dataset: dataset, alias: alias,
				metrics: metrics, tags: tags, reference: reference,
			})
			if err != nil {
				return err
			}
			opts := pushOptions{limit: rate}
			if signKey != "" {
				k, err := readSigningKey(signKey)
				if err != nil {
					return err
				}
				opts.key = &k
			}
			return push(cmd, g, args[0], req, opts)
		},
	}
	f := cmd.Flags()
	f.StringVar(&model, "model", "", "`NAME` of the model to add a version to (required; create it first with drover model create)")
	f.StringVar(&cardFile, "card", "", "model card, Markdown, from `FILE` (- for stdin)")
	f.StringVar(&parent, "parent", "", "lineage: the `VERSION` this one was derived from")
	f.StringVar(&dataset, "dataset", "", "lineage: where the training data is, with @sha256:HEX for its digest: `URI[@DIGEST]`")
	f.StringVar(&alias, "alias", "", "point `ALIAS` at the new version once it exists")
	f.StringVar(&reference, "reference", "", "build the version's reference profile, what drift is measured against, from a data set in CSV or Parquet: `FILE` (- for stdin)")
	f.StringVar(&signKey, "sign-key", "", "sign the manifest with the private key in `FILE` (drover key create)")
	// StringArray, not StringSlice: a slice flag splits on commas, and
	// values may contain them.
	f.StringArrayVar(&metrics, "metric", nil, "evaluation metric as `NAME=NUMBER` (repeatable)")
	f.StringArrayVar(&tags, "tag", nil, "tag as `KEY=VALUE` (repeatable)")
	f.StringVar(&limitRate, "limit-rate", "", "upload at most `SIZE` per second, such as 20MiB or 100MB (default: no cap)")
	return cmd
}

// parseRate parses --limit-rate: empty for no cap, otherwise bytes per
// second of at least one upload piece, since a piece is sent whole.
func parseRate(s string) (*rate.Limiter, error) {
	if s == "" {
		return nil, nil
	}
	n, err := parseByteSize(s)
	if err != nil {
		return nil, err
	}
	if n < 64<<10 {
		return nil, errors.New("want at least 64KiB per second")
	}
	return rate.NewLimiter(rate.Limit(n), uploadPiece), nil
}

// pushFlags are the raw flag values of push.
type pushFlags struct {
	model, cardFile, parent, dataset, alias, reference string
	metrics, tags                                      []string
}

// buildFinishPush checks push's flags and builds the FinishPush request,
// less its manifest, reading the card file: all of it before the tree is
// read or the server is asked anything.
func buildFinishPush(cmd *cobra.Command, stdin io.Reader, f pushFlags) (*droverv1.FinishPushRequest, error) {
	switch {
	case f.model == "":
		return nil, usageErr(cmd, errors.New("--model is required: name the model to add a version to"))
	case !names.IsName(f.model):
		return nil, usageErr(cmd, fmt.Errorf("--model %s: not a model name: %s", f.model, names.Rule))
	case f.alias != "" && !names.IsName(f.alias):
		return nil, usageErr(cmd, fmt.Errorf("--alias %s: not an alias name: %s", f.alias, names.Rule))
	}
	metrics, err := parseMetrics("metric", f.metrics)
	if err != nil {
		return nil, usageErr(cmd, err)
	}
	tags, err := parseKeyValues("tag", f.tags)
	if err != nil {
		return nil, usageErr(cmd, err)
	}
	lin := &droverv1.Lineage{}
	if f.parent != "" {
		n, ok := parseVersionNumber(f.parent)
		if !ok {
			return nil, usageErr(cmd, fmt.Errorf("--parent %s: want a version number such as 3", f.parent))
		}
		lin.ParentVersion = n
	}
	if f.dataset != "" {
		if lin.DatasetUri, lin.DatasetDigest, err = parseDataset(f.dataset); err != nil {
			return nil, usageErr(cmd, err)
		}
	}
	if lin.ParentVersion == 0 && lin.DatasetUri == "" {
		lin = nil
	}
	if f.alias == refLatest {
		return nil, usageErr(cmd, fmt.Errorf("--alias %s: %q always means the newest version and cannot be set", f.alias, refLatest))
	}
	if _, isNumber := parseVersionNumber(f.alias); isNumber {
		return nil, usageErr(cmd, fmt.Errorf("--alias %s: an alias cannot be a number, which would read as a version", f.alias))
	}
	if f.cardFile == "-" && f.reference == "-" {
		return nil, usageErr(cmd, errors.New("--card - and --reference - both read standard input; give one of them as a file"))
	}
	card, err := readCard(f.cardFile, stdin)
	if err != nil {
		return nil, err
	}
	ref, err := readReference(f.reference, stdin)
	if err != nil {
		return nil, err
	}
	return &droverv1.FinishPushRequest{
		Model: f.model, Card: card, Lineage: lin, Metrics: metrics, Tags: tags, Alias: f.alias,
		Reference: ref,
	}, nil
}

// readReference builds a reference profile from the data set at path (""
// for none, - for stdin), before anything is uploaded: Parquet when the
// data starts with Parquet's magic, CSV otherwise.
func readReference(path string, stdin io.Reader) (*droverv1.Profile, error) {
	if path == "" {
		return nil, nil
	}
	r := stdin
	var file *os.File // a regular file, which Parquet can be read from in place
	var size int64
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, fmt.Errorf("--reference: %w", err)
		}
		defer f.Close()
		r = f
		if fi, err := f.Stat(); err == nil && fi.Mode().IsRegular() {
			file, size = f, fi.Size()
		}
	}
	br := bufio.NewReaderSize(r, 1<<20)
	head, _ := br.Peek(len(parquetref.Magic))
	var p *sketch.Profile
	var err error
	switch {
	case !parquetref.IsParquet(head):
		p, _, err = sketch.ReferenceFromCSV(br)
	case file != nil:
		p, _, err = parquetref.Read(file, size)
	default:
		// Parquet's index is at the end of the file: read a pipe whole.
		var data []byte
		data, err = io.ReadAll(io.LimitReader(br, maxStdinParquet+1))
		if err == nil && len(data) > maxStdinParquet {
			err = fmt.Errorf("more than %d bytes of Parquet from a pipe; give the file's path instead", maxStdinParquet)
		}
		if err == nil {
			p, _, err = parquetref.Read(bytes.NewReader(data), int64(len(data)))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("--reference %s: %w", path, err)
	}
	pb := p.ToProto()
	if n := proto.Size(pb); n > sketch.MaxReferenceBytes {
		return nil, fmt.Errorf("--reference %s: the profile takes %d bytes, more than the %d a version may carry; keep fewer columns", path, n, sketch.MaxReferenceBytes)
	}
	return pb, nil
}

// maxStdinParquet bounds a Parquet reference read from standard input or
// another pipe, which has to be held in memory whole.
const maxStdinParquet = 1 << 30

// parseDataset splits URI[@sha256:HEX]. Only an "@" followed by a digest
// ends the URI, so a URI may hold "@" itself (s3://user@host/data).
func parseDataset(s string) (uri, digest string, err error) {
	uri = s
	if i := strings.LastIndex(s, "@sha256:"); i >= 0 {
		uri = s[:i]
		if digest, err = parseDigest(s[i+1:]); err != nil {
			return "", "", fmt.Errorf("--dataset %s: digest: %w", s, err)
		}
	}
	if strings.TrimSpace(uri) == "" {
		return "", "", fmt.Errorf("--dataset %s: the URI is empty; want URI or URI@sha256:HEX", s)
	}
	return uri, digest, nil
}

// push pushes the tree at path (see pushTree) and prints what it did.
func push(cmd *cobra.Command, g *globals, path string, req *droverv1.FinishPushRequest, opts pushOptions) error {
	ctx := cmd.Context()
	c, err := g.clients()
	if err != nil {
		return err
	}
	p, err := pushTree(ctx, g, c, path, req, opts)
	if err != nil {
		return err
	}
	v := p.resp.Msg.GetVersion()
	return printResult(cmd, p.resp.Msg, func(w io.Writer) {
		fmt.Fprintf(w, "Created %s@%d (%s, index %d)\n", v.GetModel(), v.GetVersion(), p.digest, p.resp.Msg.GetMeta().GetIndex())
		fmt.Fprintln(w, uploadSummary(p.sent, p.distinct, int64(p.manifest.GetTotalSize())))
		if servers := p.resp.Msg.GetDurableOn(); len(servers) > 0 {
			fmt.Fprintf(w, "Stored on %s\n", strings.Join(servers, ", "))
		}
		if req.GetAlias() != "" {
			fmt.Fprintf(w, "%s@%s → %d\n", v.GetModel(), req.GetAlias(), v.GetVersion())
		}
		if opts.key != nil {
			fmt.Fprintf(w, "Signed with key %s and the cluster's key\n", opts.key.ID())
		}
	})
}

// pushOptions are how pushTree pushes; the zero value is an unsigned push
// at full speed.
type pushOptions struct {
	// limit caps the upload; nil for no cap.
	limit *rate.Limiter
	// key signs the manifest besides the cluster key; nil for none.
	key *artifact.SigningKey
}

// pushResult is what pushTree did.
type pushResult struct {
	resp     *connect.Response[droverv1.FinishPushResponse]
	digest   artifact.Digest
	manifest *droverv1.Manifest
	// sent is the bytes the last server taking the upload lacked;
	// distinct is the size of the tree's distinct chunks.
	sent, distinct int64
}

// pushTree builds the manifest of path, signs it with opts.key when there
// is one, uploads the chunks the cluster lacks through c (moving on to another server if that one goes away) and
// finishes the push with req's metadata. It shows progress on g's
// standard error when that is a terminal.
func pushTree(ctx context.Context, g *globals, c *clients, path string, req *droverv1.FinishPushRequest, opts pushOptions) (pushResult, error) {
	var out pushResult
	// Chunking reads every byte (about a second per GiB), so say what is
	// happening meanwhile; the note is blanked for the progress line.
	note := ""
	if g.isTerminal(g.stderr) {
		note = fmt.Sprintf("Reading %s…", path)
		fmt.Fprint(g.stderr, note)
	}
	m, refs, err := artifact.BuildManifest(ctx, path, artifact.BuildOptions{
		Limits: artifact.DefaultLimits(), Model: req.GetModel(),
	})
	if note != "" {
		fmt.Fprintf(g.stderr, "\r%s\r", strings.Repeat(" ", utf8.RuneCountInString(note)))
	}
	if err != nil {
		return out, buildError(err)
	}
	b, err := artifact.MarshalManifest(m)
	if err != nil {
		return out, fmt.Errorf("push %s: %w", path, err)
	}
	out.manifest, out.digest = m, artifact.Sum(b)
	// The server adds the cluster key's signature at FinishPush.
	req.Manifest = &droverv1.SignedManifest{Manifest: b}
	if key := opts.key; key != nil {
		sig, err := artifact.Sign(b, *key)
		if err != nil {
			return out, fmt.Errorf("push %s: %w", path, err)
		}
		req.Manifest.Signatures = []*droverv1.ManifestSignature{sig}
	}

	// The other servers, asked up front: once the server taking the
	// upload is gone it can no longer name them.
	others := otherServers(ctx, c)
	for _, r := range refs {
		out.distinct += int64(r.Size)
	}
	for {
		out.sent, err = uploadMissing(ctx, g, c, req, out.digest, refs, opts.limit)
		if err == nil {
			break
		}
		if ctx.Err() != nil || !lostServer(err) || len(others) == 0 {
			return out, err
		}
		next := others[0]
		others = others[1:]
		// Chunks the lost server already passed on stay wherever they
		// landed; the next server answers which it still lacks.
		fmt.Fprintf(g.stderr, "Lost %s mid-push (%v); resuming against %s\n", c.address, lostCause(err), next)
		if c, err = g.clientsAt(next); err != nil {
			return out, err
		}
	}
	out.resp, err = c.artifact.FinishPush(ctx, connect.NewRequest(req))
	return out, err
}

// resumeHint is the advice for a push cut off before it finished.
const resumeHint = "run the same command again: the push resumes, sending only the chunks the cluster still lacks"

// uploadMissing asks the server behind c which of the manifest's chunks it
// lacks and uploads those, with progress. It returns the bytes it had to
// send.
func uploadMissing(ctx context.Context, g *globals, c *clients, req *droverv1.FinishPushRequest, digest artifact.Digest, refs []artifact.ChunkRef, limit *rate.Limiter) (int64, error) {
	start, err := c.artifact.StartPush(ctx, connect.NewRequest(&droverv1.StartPushRequest{
		Model: req.GetModel(), Manifest: req.GetManifest(),
	}))
	if err != nil {
		return 0, err
	}
	if got := start.Msg.GetArtifactDigest(); got != digest.String() {
		return 0, fmt.Errorf("push: the server names the manifest %s, but its SHA-256 is %s: "+
			"the server is not speaking this version of the protocol", got, digest)
	}
	missing, err := missingChunks(refs, start.Msg.GetMissing())
	if err != nil {
		return 0, fmt.Errorf("push: %w", err)
	}
	var toSend int64
	for _, r := range missing {
		toSend += int64(r.Size)
	}
	prog := g.transferProgress("Uploading", toSend)
	sent, err := uploadChunks(ctx, c, start.Msg.GetPushId(), missing, prog, limit)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, artifact.ErrFileChanged) {
			return 0, err // interrupted, or a tree in flux: resuming is not the advice
		}
		return 0, &lostUpload{err: withHint(fmt.Errorf("push to %s stopped after %s of %s: %w", req.GetModel(),
			units.Bytes(uint64(sent)), units.Bytes(uint64(toSend)), err), resumeHint), cause: err}
	}
	prog.done(toSend)
	return toSend, nil
}

// lostUpload is an upload that stopped part way; cause is what stopped it.
type lostUpload struct {
	err   error
	cause error
}

func (e *lostUpload) Error() string { return e.err.Error() }
func (e *lostUpload) Unwrap() error { return e.err }

// lostCause is what stopped an upload, without the advice around it.
func lostCause(err error) error {
	var lost *lostUpload
	if errors.As(err, &lost) {
		return lost.cause
	}
	return err
}

// lostServer reports whether err means the server taking a push went away
// (killed, restarted, unreachable) rather than refused it: only then is
// another server worth trying.
func lostServer(err error) bool {
	err = lostCause(err)
	if dialError(err) != nil {
		return true
	}
	var cerr *connect.Error
	if errors.As(err, &cerr) && serverDetail(cerr) != nil {
		return false // the server answered: a refusal, not a loss
	}
	switch connect.CodeOf(err) {
	case connect.CodeUnavailable, connect.CodeUnknown, connect.CodeInternal, connect.CodeAborted:
		return true
	}
	return false
}

// otherServers returns the API addresses of the cluster's servers other
// than the one c talks to, as https:// URLs, or none when the cluster
// cannot say (an old server, a refused call): failover is a convenience.
func otherServers(ctx context.Context, c *clients) []string {
	info, err := c.agent.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range info.Msg.GetServers() {
		addr, err := normalizeAddress(s)
		if err == nil && addr != c.address {
			out = append(out, addr)
		}
	}
	return out
}

// uploadSummary says how much of the artifact this push sent. distinct
// is the size of its distinct chunks: repeated bytes are sent once, which
// is not the cluster's doing.
func uploadSummary(sent, distinct, total int64) string {
	switch {
	case sent == 0:
		return fmt.Sprintf("Uploaded nothing: all %s was already in the cluster", units.Bytes(uint64(total)))
	case sent >= distinct:
		return fmt.Sprintf("Uploaded %s", units.Bytes(uint64(sent)))
	}
	return fmt.Sprintf("Uploaded %s of %s: the rest was already in the cluster", units.Bytes(uint64(sent)), units.Bytes(uint64(total)))
}

// buildError adds what to do to BuildManifest's refusals.
func buildError(err error) error {
	var hint string
	switch {
	case errors.Is(err, artifact.ErrSymlink):
		hint = "a version holds only regular files: copy the link's target into the tree in its place, or remove the link"
	case errors.Is(err, artifact.ErrSpecialFile):
		hint = "a version holds only regular files and directories: remove the device, socket or pipe from the tree"
	case errors.Is(err, artifact.ErrEmptyTree):
		hint = "point PATH at the model's file or at the directory that holds its files"
	case errors.Is(err, artifact.ErrEscapesRoot), errors.Is(err, artifact.ErrBadPath):
		hint = "rename the file: names must be printable UTF-8 without backslashes, and must not differ from another only in case"
	case errors.Is(err, artifact.ErrTooLarge):
		hint = "a version holds at most 1 TiB in 100,000 files; split the model, or leave out what agents do not need"
	case errors.Is(err, artifact.ErrFileChanged):
		hint = "wait until whatever writes the tree has finished, then push again"
	case errors.Is(err, fs.ErrNotExist):
		hint = "check PATH: it names the model's file or directory"
	default:
		return err
	}
	return withHint(err, hint)
}

// missingChunks maps the digests the server lacks to where the chunks are
// on disk, refusing a digest the manifest does not list.
func missingChunks(refs []artifact.ChunkRef, missing [][]byte) ([]artifact.ChunkRef, error) {
	byDigest := make(map[artifact.Digest]artifact.ChunkRef, len(refs))
	for _, r := range refs {
		byDigest[r.Digest] = r
	}
	seen := make(map[artifact.Digest]bool, len(missing))
	out := make([]artifact.ChunkRef, 0, len(missing))
	for _, b := range missing {
		d, err := artifact.DigestFromBytes(b)
		if err != nil {
			return nil, fmt.Errorf("the server asked for a malformed chunk digest: %w", err)
		}
		r, ok := byDigest[d]
		if !ok {
			return nil, fmt.Errorf("the server asked for chunk %s, which the manifest does not list", d)
		}
		if !seen[d] {
			seen[d] = true
			out = append(out, r)
		}
	}
	return out, nil
}

// uploadChunks sends refs over up to uploadStreams UploadChunks streams at
// once. The first failure aborts every stream: an aborted stream, unlike a
// closed one, tells the server nothing more is coming on it. It returns
// the bytes sent.
func uploadChunks(ctx context.Context, c *clients, pushID string, refs []artifact.ChunkRef, prog *progress, limit *rate.Limiter) (int64, error) {
	if len(refs) == 0 {
		return 0, nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		once     sync.Once
		firstErr error
		wg       sync.WaitGroup
		sent     atomic.Int64
	)
	work := make(chan artifact.ChunkRef)
	for range min(uploadStreams, len(refs)) {
		wg.Go(func() {
			if err := uploadStream(ctx, c, pushID, work, &sent, prog, limit); err != nil {
				once.Do(func() { firstErr = err; cancel() })
			}
		})
	}
feed:
	for _, r := range refs {
		select {
		case work <- r:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if firstErr == nil {
		firstErr = ctx.Err() // the caller's cancellation
	}
	return sent.Load(), firstErr
}

// uploadStream sends the chunks it takes from work over one stream, each
// read again from its file (which checks it has not changed) and sent in
// pieces of at most uploadPiece bytes.
func uploadStream(ctx context.Context, c *clients, pushID string, work <-chan artifact.ChunkRef, sent *atomic.Int64, prog *progress, limit *rate.Limiter) error {
	// Opened on the first chunk: a stream that ends up with no work sends
	// nothing at all.
	var stream *connect.ClientStreamForClient[droverv1.UploadChunksRequest, droverv1.UploadChunksResponse]
	var buf []byte
	for ref := range work {
		if stream == nil {
			stream = c.artifact.UploadChunks(ctx)
		}
		data, err := artifact.ReadChunk(ref, buf)
		if err != nil {
			return withHint(fmt.Errorf("push: %w", err), "wait until whatever writes the tree has finished, then push again")
		}
		buf = data
		for off := 0; off < len(data); off += uploadPiece {
			piece := data[off:min(off+uploadPiece, len(data))]
			if limit != nil {
				if err := limit.WaitN(ctx, len(piece)); err != nil {
					return err
				}
			}
			msg := &droverv1.UploadChunksRequest{PushId: pushID, Data: piece}
			if off == 0 {
				msg.Digest, msg.Size = ref.Digest[:], uint64(len(data))
			}
			// Send marshals the message before returning, so buf can be
			// reused for the next chunk.
			if err := stream.Send(msg); err != nil {
				if errors.Is(err, io.EOF) {
					// The server ended the stream; its reason comes with
					// the response.
					_, err = stream.CloseAndReceive()
				}
				return err
			}
			sent.Add(int64(len(piece)))
			prog.add(int64(len(piece)))
		}
	}
	if err := ctx.Err(); err != nil {
		return err // never close a stream cleanly once the push is failing
	}
	if stream == nil {
		return nil
	}
	_, err := stream.CloseAndReceive()
	return err
}

func newModelPullCommand(g *globals) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "pull NAME[@REF] DIR",
		Short: "Download a version's files into a directory",
		Long: `Download the files of a model version into the directory DIR.

REF is a version number, an alias or latest (the default). Before anything
is downloaded, the version's manifest is checked against the manifest
signing keys the cluster lists (the connection to it is checked against
--ca-cert), and its SHA-256 against the version's artifact digest; then
every chunk is checked against the manifest as it arrives. Any mismatch
stops the pull and leaves DIR as it was.

The files are written into a new directory beside DIR and moved into place
in one step once they are all complete and synced: DIR never holds part of
a version. DIR must not exist, or be empty; --force replaces a directory
that has other contents, again in one step and only once the new files are
complete.

It shows progress on standard error when that is a terminal. -o json
prints the version and its signed manifest (GetManifestResponse) once the
files are in place.`,
		Example: `  drover model pull resnet@prod ./resnet
  drover model pull resnet@3 /srv/models/resnet --force`,
		// A person may well write -o DIR, as with curl: say where the
		// directory goes rather than that it is not an output format. Args
		// run before the root's check of -o, and before a missing DIR is
		// reported.
		Args: func(cmd *cobra.Command, args []string) error {
			if checkOutputFormat(cmd) != nil {
				return usageErr(cmd, fmt.Errorf("-o %s: -o is the output format, table or json; "+
					"give the directory as the second argument: drover model pull NAME[@REF] DIR", outputFormat(cmd)))
			}
			return exactArgs("NAME[@REF]", "DIR")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			name, ref, err := parseModelRef(args[0])
			if err != nil {
				return usageErr(cmd, err)
			}
			dir := args[1]
			if err := checkPullDestination(dir, force); err != nil {
				return err
			}
			return pull(cmd, g, name, ref, dir)
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "replace DIR if it exists and is not empty")
	addReadFlags(cmd, g, nil)
	return cmd
}

// checkPullDestination refuses a destination that pull would overwrite
// without --force, before anything is asked of the server.
func checkPullDestination(dir string, force bool) error {
	fi, err := os.Lstat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("pull: %w", err)
	case !fi.IsDir():
		return withHint(fmt.Errorf("%s exists and is not a directory", dir), "remove it, or choose another directory")
	case force:
		return nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("pull: %w", err)
	}
	if len(entries) > 0 {
		return withHint(fmt.Errorf("%s exists and is not empty", dir),
			"pass --force to replace its contents with the version's files, or choose another directory")
	}
	return nil
}

// pull verifies a version's manifest and assembles its files in dir.
func pull(cmd *cobra.Command, g *globals, name, ref, dir string) error {
	ctx := cmd.Context()
	c, err := g.clients()
	if err != nil {
		return err
	}
	resp, err := c.artifact.GetManifest(ctx, connect.NewRequest(&droverv1.GetManifestRequest{Model: name, Ref: ref}))
	if err != nil {
		return err
	}
	v := resp.Msg.GetVersion()
	label := fmt.Sprintf("%s@%d", v.GetModel(), v.GetVersion())
	signed := resp.Msg.GetManifest()
	if len(signed.GetManifest()) == 0 {
		return withHint(fmt.Errorf("pull %s: the cluster holds no files for it", label),
			"it was registered by digest (`drover model version create`) rather than pushed; only versions pushed with `drover model push` can be pulled")
	}
	info, err := c.agent.GetClusterInfo(ctx, connect.NewRequest(&droverv1.GetClusterInfoRequest{}))
	if err != nil {
		return err
	}
	trusted := make(map[artifact.KeyID]ed25519.PublicKey, len(info.Msg.GetManifestKeys()))
	for id, pub := range info.Msg.GetManifestKeys() {
		trusted[artifact.KeyID(id)] = ed25519.PublicKey(pub)
	}
	if len(trusted) == 0 {
		return withHint(fmt.Errorf("pull %s: the cluster at %s lists no manifest signing keys, so no version can be verified; nothing was written",
			label, c.address), "the servers are older than `drover model pull`: upgrade them")
	}
	m, digest, err := artifact.Verify(signed, trusted, artifact.DefaultLimits())
	if err != nil {
		return verifyError(label, err)
	}
	if mm := m.GetModel(); mm != "" && mm != v.GetModel() {
		return withHint(fmt.Errorf("pull %s: the manifest was signed for model %s, not %s; nothing was written", label, mm, v.GetModel()),
			"the server answered with another model's files: report it to the cluster's operators")
	}
	if want := v.GetArtifact().GetDigest(); digest.String() != want {
		return withHint(fmt.Errorf("pull %s: the manifest the server sent is %s, but the version's artifact is %s; nothing was written",
			label, digest, want), "the server answered with another version's manifest: report it to the cluster's operators")
	}

	prog := g.transferProgress("Downloading", int64(m.GetTotalSize()))
	f := newChunkFetcher(ctx, c, v.GetModel(), v.GetVersion(), m, prog)
	err = artifact.Assemble(ctx, m, dir, f.open)
	f.stop()
	if err != nil {
		if errors.Is(err, artifact.ErrChunkCorrupt) {
			return withHint(fmt.Errorf("pull %s: %w; nothing was written", label, err),
				"the server sent bytes that do not match the signed manifest: try again, and report it to the cluster's operators if it persists")
		}
		return fmt.Errorf("pull %s: %w", label, err)
	}
	prog.done(int64(m.GetTotalSize()))
	return printResult(cmd, resp.Msg, func(w io.Writer) {
		fmt.Fprintf(w, "Pulled %s (%s) into %s: %d files, %s\n", label, digest, dir,
			len(m.GetFiles()), units.Bytes(m.GetTotalSize()))
	})
}

// verifyError explains Verify's refusals. Each means the bytes must not
// be used, so each says nothing was written.
func verifyError(label string, err error) error {
	err = fmt.Errorf("pull %s: %w; nothing was written", label, err)
	switch {
	case errors.Is(err, artifact.ErrUnsigned):
		return withHint(err, "the cluster signs every version pushed to it: report the unsigned version to the cluster's operators")
	case errors.Is(err, artifact.ErrUnknownKey):
		return withHint(err, "the key that signed it is not among the cluster's manifest signing keys: it may have been revoked, "+
			"or --address and --ca-cert may point at another cluster than the one the version came from")
	case errors.Is(err, artifact.ErrBadSignature):
		return withHint(err, "the manifest was changed after it was signed: do not use this version, and report it to the cluster's operators")
	case errors.Is(err, artifact.ErrInvalidManifest):
		return withHint(err, "the manifest is damaged or from a newer Drover: upgrade drover, or report it to the cluster's operators")
	}
	return err
}

// chunkFetcher fetches the chunks of a manifest in the order Assemble asks
// for them, up to pullWindow ahead of it, each in its own GetChunk call. A
// chunk that occurs again later is kept for its next use while the chunks
// kept come to at most pullRepeatCache bytes, and fetched again otherwise.
type chunkFetcher struct {
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	order  []artifact.Digest
	// plan says, for each chunk in order, whether to fetch it (else it
	// is kept from an earlier use) and whether to keep it after use.
	plan   []fetchStep
	slots  []chan fetched
	window chan struct{} // a token per chunk fetched and not yet taken
	next   int
	kept   map[artifact.Digest][]byte
	prog   *progress
}

type fetchStep struct{ fetch, keep bool }

type fetched struct {
	data []byte
	err  error
}

// pullRepeatCache bounds the bytes a pull keeps for chunks that occur
// again later in the manifest.
const pullRepeatCache = 64 << 20

func newChunkFetcher(ctx context.Context, c *clients, model string, version uint64, m *droverv1.Manifest, prog *progress) *chunkFetcher {
	ctx, cancel := context.WithCancel(ctx)
	f := &chunkFetcher{ctx: ctx, cancel: cancel, window: make(chan struct{}, pullWindow),
		kept: map[artifact.Digest][]byte{}, prog: prog}
	var sizes []int64
	for _, file := range m.GetFiles() {
		for _, ch := range file.GetChunks() {
			d, _ := artifact.DigestFromBytes(ch.GetDigest()) // validated by Verify
			f.order = append(f.order, d)
			sizes = append(sizes, int64(ch.GetSize()))
		}
	}
	f.plan = planFetches(f.order, sizes, pullRepeatCache)
	f.slots = make([]chan fetched, len(f.order))
	for i := range f.slots {
		f.slots[i] = make(chan fetched, 1)
	}
	f.wg.Go(func() {
		for i, d := range f.order {
			if !f.plan[i].fetch {
				continue
			}
			select {
			case f.window <- struct{}{}:
			case <-ctx.Done():
				return
			}
			f.wg.Go(func() {
				resp, err := c.artifact.GetChunk(ctx, connect.NewRequest(&droverv1.GetChunkRequest{
					Model: model, Version: version, Digest: d[:],
				}))
				if err != nil {
					f.slots[i] <- fetched{err: fmt.Errorf("get chunk %s: %w", d, err)}
					return
				}
				f.slots[i] <- fetched{data: resp.Msg.GetData()}
			})
		}
	})
	return f
}

// planFetches decides which chunks to fetch and which to keep for their
// next use, keeping at most budget bytes at any time. It depends only on
// the order, so the fetching goroutine and open agree without talking.
func planFetches(order []artifact.Digest, sizes []int64, budget int64) []fetchStep {
	nextUse := make([]int, len(order))
	last := map[artifact.Digest]int{}
	for i := len(order) - 1; i >= 0; i-- {
		nextUse[i] = -1
		if j, ok := last[order[i]]; ok {
			nextUse[i] = j
		}
		last[order[i]] = i
	}
	plan := make([]fetchStep, len(order))
	kept := map[artifact.Digest]bool{}
	var held int64
	for i, d := range order {
		plan[i].fetch = !kept[d]
		switch {
		case nextUse[i] < 0 && kept[d]:
			delete(kept, d)
			held -= sizes[i]
		case nextUse[i] >= 0 && !kept[d] && held+sizes[i] <= budget:
			kept[d] = true
			held += sizes[i]
		}
		plan[i].keep = kept[d]
	}
	return plan
}

// open hands Assemble the next chunk; Assemble asks in manifest order.
func (f *chunkFetcher) open(d artifact.Digest) (io.ReadCloser, error) {
	i := f.next
	if i >= len(f.order) || f.order[i] != d {
		return nil, fmt.Errorf("get chunk %s: asked out of manifest order", d)
	}
	f.next++
	var data []byte
	if f.plan[i].fetch {
		var r fetched
		select {
		case r = <-f.slots[i]:
		case <-f.ctx.Done():
			return nil, f.ctx.Err()
		}
		<-f.window
		if r.err != nil {
			return nil, r.err
		}
		data = r.data
	} else {
		data = f.kept[d]
	}
	if f.plan[i].keep {
		f.kept[d] = data
	} else {
		delete(f.kept, d)
	}
	f.prog.add(int64(len(data)))
	return io.NopCloser(bytes.NewReader(data)), nil
}

// stop cancels the fetches still running and waits for them.
func (f *chunkFetcher) stop() {
	f.cancel()
	f.wg.Wait()
}
