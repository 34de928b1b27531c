package cli

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/internal/units"
	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newVersionCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "version",
		Short: "Register and inspect a model's immutable versions",
		Long: `Register and inspect model versions.

A version records an artifact by its content digest and size, with the
documentation that makes it reproducible and reviewable: a model card,
lineage (parent version, dataset, training run, code revision) and metrics.
Versions are numbered 1, 2, 3, … per model and never change once created.`,
		Example: `  drover model version create resnet --digest sha256:… --size 102400000
  drover model version ls resnet
  drover model version show resnet@prod`,
	}, newVersionCreateCommand(g), newVersionListCommand(g), newVersionShowCommand(g))
}

func newVersionCreateCommand(g *globals) *cobra.Command {
	var (
		digest, size, format, cardFile            string
		parent                                    uint64
		datasetDigest, datasetURI, runID, codeRev string
		metrics, tags, files                      []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME --digest sha256:HEX --size BYTES",
		Short: "Register a new version of a model",
		Long: `Register a new, immutable version of a model. The server gives it the next
version number.

The artifact is identified by --digest, the SHA-256 of its bytes, and
--size; for a multi-file artifact, list each file with --file
PATH=sha256:HEX:SIZE. Everything else documents the version and is worth
filling in, because it cannot be added later:

  --card-file   the model card, Markdown (- reads stdin)
  --parent, --dataset-digest, --dataset-uri, --run-id, --code-revision
                lineage: where the version came from
  --metric      evaluation results, NAME=NUMBER, repeatable
  --tag         free-form KEY=VALUE, repeatable`,
		Example: `  drover model version create resnet \
    --digest sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 \
    --size 102400000 --format onnx --card-file CARD.md \
    --parent 2 --dataset-uri s3://data/imagenet-2024 --run-id run-417 \
    --code-revision 3f2c1ab --metric top1=0.812 --metric top5=0.957

  # Digest and size of a local file:
  sha256sum model.onnx; stat -c %s model.onnx`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := buildCreateVersion(cmd, args[0], g.stdin, versionFlags{
				digest: digest, size: size, format: format, cardFile: cardFile, parent: parent,
				datasetDigest: datasetDigest, datasetURI: datasetURI, runID: runID, codeRev: codeRev,
				metrics: metrics, tags: tags, files: files,
			})
			if err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.model.CreateVersion(cmd.Context(), connect.NewRequest(req))
			if err != nil {
				return err
			}
			v := resp.Msg.GetVersion()
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Created %s@%d (%s, index %d)\n", v.GetModel(), v.GetVersion(),
					v.GetArtifact().GetDigest(), resp.Msg.GetMeta().GetIndex())
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&digest, "digest", "", "SHA-256 of the artifact, `sha256:HEX` (required)")
	f.StringVar(&size, "size", "", "size of the artifact in `BYTES` (required)")
	f.StringVar(&format, "format", "", "artifact format: onnx, safetensors, gguf, torchscript, …")
	f.StringVar(&cardFile, "card-file", "", "model card, Markdown, from `PATH` (- for stdin)")
	f.Uint64Var(&parent, "parent", 0, "lineage: the version this one was derived from")
	f.StringVar(&datasetDigest, "dataset-digest", "", "lineage: digest of the training data")
	f.StringVar(&datasetURI, "dataset-uri", "", "lineage: where the training data lives")
	f.StringVar(&runID, "run-id", "", "lineage: the training run's ID")
	f.StringVar(&codeRev, "code-revision", "", "lineage: the training code's revision, such as a commit")
	// StringArray, not StringSlice: a slice flag splits on commas, and
	// values may contain them.
	f.StringArrayVar(&metrics, "metric", nil, "evaluation metric as `NAME=NUMBER` (repeatable)")
	f.StringArrayVar(&tags, "tag", nil, "tag as `KEY=VALUE` (repeatable)")
	f.StringArrayVar(&files, "file", nil, "one file of the artifact as `PATH=sha256:HEX:SIZE` (repeatable)")
	return cmd
}

// versionFlags are the raw flag values of version create.
type versionFlags struct {
	digest, size, format, cardFile            string
	parent                                    uint64
	datasetDigest, datasetURI, runID, codeRev string
	metrics, tags, files                      []string
}

// buildCreateVersion checks the flags and builds the request, reading the
// card file. Mistakes in flags are usage errors; an unreadable card file
// is not.
func buildCreateVersion(cmd *cobra.Command, model string, stdin io.Reader, f versionFlags) (*droverv1.CreateVersionRequest, error) {
	if f.digest == "" {
		return nil, usageErr(cmd, fmt.Errorf("--digest is required"))
	}
	digest, err := parseDigest(f.digest)
	if err != nil {
		return nil, usageErr(cmd, fmt.Errorf("--digest %s: %w", f.digest, err))
	}
	if f.size == "" {
		return nil, usageErr(cmd, fmt.Errorf("--size is required"))
	}
	size, err := parseSize(f.size)
	if err != nil {
		return nil, usageErr(cmd, fmt.Errorf("--size %s: %w", f.size, err))
	}
	if f.datasetDigest != "" {
		if _, err := parseDigest(f.datasetDigest); err != nil {
			return nil, usageErr(cmd, fmt.Errorf("--dataset-digest %s: %w", f.datasetDigest, err))
		}
	}
	metrics, err := parseMetrics("metric", f.metrics)
	if err != nil {
		return nil, usageErr(cmd, err)
	}
	tags, err := parseKeyValues("tag", f.tags)
	if err != nil {
		return nil, usageErr(cmd, err)
	}
	var files []*droverv1.ArtifactFile
	for _, s := range f.files {
		af, err := parseFileSpec("file", s)
		if err != nil {
			return nil, usageErr(cmd, err)
		}
		files = append(files, af)
	}
	card, err := readCard(f.cardFile, stdin)
	if err != nil {
		return nil, err
	}
	req := &droverv1.CreateVersionRequest{
		Model:    model,
		Artifact: &droverv1.ArtifactManifest{Digest: digest, SizeBytes: size, Format: f.format, Files: files},
		Card:     card,
		Metrics:  metrics,
		Tags:     tags,
	}
	lin := &droverv1.Lineage{
		ParentVersion: f.parent, DatasetDigest: f.datasetDigest, DatasetUri: f.datasetURI,
		TrainingRunId: f.runID, CodeRevision: f.codeRev,
	}
	if proto.Size(lin) > 0 {
		req.Lineage = lin
	}
	return req, nil
}

func newVersionListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls NAME",
		Aliases: []string{"list"},
		Short:   "List a model's versions",
		Long: `List a model's versions, oldest first, with their artifact digest (shortened;
show prints it whole), size, format and the aliases that point at them.`,
		Example: `  drover model version ls resnet
  drover model version ls resnet -o json | jq '.versions[] | {version, metrics}'`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			resp, err := c.model.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: args[0], Options: opts}))
			if err != nil {
				return err
			}
			var aliases map[uint64]string
			if outputFormat(cmd) == outputTable {
				mr, err := c.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: args[0]}))
				if err != nil {
					return err
				}
				aliases = aliasesByVersion(mr.Msg.GetModel().GetAliases())
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { versionTable(w, resp.Msg.GetVersions(), aliases, g) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func versionTable(w io.Writer, versions []*droverv1.ModelVersion, aliases map[uint64]string, g *globals) {
	versions = slices.Clone(versions)
	slices.SortFunc(versions, func(a, b *droverv1.ModelVersion) int { return cmp.Compare(a.GetVersion(), b.GetVersion()) })
	row(w, "VERSION", "DIGEST", "SIZE", "FORMAT", "ALIASES", "CREATED", "AGE")
	for _, v := range versions {
		a := v.GetArtifact()
		row(w, formatUint(v.GetVersion()), shortDigest(a.GetDigest()), units.Bytes(a.GetSizeBytes()),
			orDash(a.GetFormat()), orDash(aliases[v.GetVersion()]),
			formatTime(v.GetCreateTime()), formatAge(v.GetCreateTime(), g.now()))
	}
}

func newVersionShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show NAME[@REF]",
		Short: "Show one version: artifact, lineage, metrics",
		Long: `Show everything recorded about one version: its artifact (digest, size,
format, files), lineage, metrics and tags. The model card is printed by
` + "`drover model card`" + `.

REF is a version number, an alias or latest (the default).`,
		Example: `  drover model version show resnet@3
  drover model version show resnet@prod
  drover model version show resnet          # the latest version`,
		Args: exactArgs("NAME[@REF]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := fetchVersion(cmd, g, &q, args[0])
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { versionView(w, resp.Msg.GetVersion(), g) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func versionView(w io.Writer, v *droverv1.ModelVersion, g *globals) {
	a, lin := v.GetArtifact(), v.GetLineage()
	field(w, "Model", v.GetModel())
	field(w, "Version", formatUint(v.GetVersion()))
	field(w, "Digest", a.GetDigest())
	field(w, "Size", fmt.Sprintf("%s (%d bytes)", units.Bytes(a.GetSizeBytes()), a.GetSizeBytes()))
	field(w, "Format", a.GetFormat())
	if lin.GetParentVersion() != 0 {
		field(w, "Parent version", formatUint(lin.GetParentVersion()))
	}
	field(w, "Dataset digest", lin.GetDatasetDigest())
	field(w, "Dataset URI", lin.GetDatasetUri())
	field(w, "Training run", lin.GetTrainingRunId())
	field(w, "Code revision", lin.GetCodeRevision())
	field(w, "Tags", formatPairs(v.GetTags(), formatString))
	created := formatTimeAge(v.GetCreateTime(), g.now())
	if by := v.GetCreatedBy(); by != "" {
		created += " by " + by
	}
	field(w, "Created", created)
	if card := v.GetCard(); card != "" {
		field(w, "Card", fmt.Sprintf("%d lines; print it with `drover model card %s@%d`",
			strings.Count(strings.TrimRight(card, "\n"), "\n")+1, v.GetModel(), v.GetVersion()))
	} else {
		field(w, "Card", "none")
	}
	if n := v.GetReferenceFeatures(); n > 0 {
		ref := fmt.Sprintf("%d features, from the %s", n, v.GetReferenceSource())
		if rows := v.GetReference().GetRequests(); rows > 0 {
			ref += fmt.Sprintf(" (%d rows)", rows)
		}
		field(w, "Reference", ref)
	} else {
		field(w, "Reference", "none: drift is not measured; give one with drover model push --reference")
	}

	if m := v.GetMetrics(); len(m) > 0 {
		fmt.Fprintln(w)
		row(w, "METRIC", "VALUE")
		for _, k := range slices.Sorted(maps.Keys(m)) {
			row(w, k, formatFloat(m[k]))
		}
	}
	if files := a.GetFiles(); len(files) > 0 {
		files = slices.Clone(files)
		slices.SortFunc(files, func(x, y *droverv1.ArtifactFile) int { return cmp.Compare(x.GetPath(), y.GetPath()) })
		fmt.Fprintln(w)
		row(w, "FILE", "DIGEST", "SIZE")
		for _, f := range files {
			row(w, f.GetPath(), f.GetDigest(), units.Bytes(f.GetSizeBytes()))
		}
	}
}

// fetchVersion reads the version NAME[@REF] names, with the command's
// query flags; model card and version show share it.
func fetchVersion(cmd *cobra.Command, g *globals, q *queryFlags, arg string) (*connect.Response[droverv1.GetVersionResponse], error) {
	name, ref, err := parseModelRef(arg)
	if err != nil {
		return nil, usageErr(cmd, err)
	}
	c, opts, err := g.readClients(cmd, q)
	if err != nil {
		return nil, err
	}
	return c.model.GetVersion(cmd.Context(), connect.NewRequest(&droverv1.GetVersionRequest{
		Model: name, Ref: ref, Options: opts,
	}))
}

// readCard reads a model card from path: "" for none, "-" for stdin.
func readCard(path string, stdin io.Reader) (string, error) {
	var b []byte
	var err error
	switch path {
	case "":
		return "", nil
	case "-":
		if b, err = io.ReadAll(stdin); err != nil {
			return "", fmt.Errorf("read model card from stdin: %w", err)
		}
	default:
		if b, err = os.ReadFile(path); err != nil {
			return "", fmt.Errorf("read model card: %w", err)
		}
	}
	return string(b), nil
}
