package cli

import (
	"cmp"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newModelCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "model",
		Short: "Manage the model registry: models, versions, aliases, cards",
		Long: `Manage the model registry.

A model is a named family of versions. A version is immutable once created:
its artifact digest, model card, lineage and metrics never change, and its
number is never reused. Aliases such as prod or canary are movable pointers
to version numbers; deployments usually follow an alias, so promoting a
version is one ` + "`drover model alias set`" + `.

Versions are referred to as NAME@REF, where REF is a version number, an
alias or "latest"; NAME alone means NAME@latest.

` + "`drover model push`" + ` uploads a model's files and creates a version from
them; ` + "`drover model pull`" + ` downloads a version's files, checking them
against the manifest the cluster signed.`,
		Example: `  drover model create resnet --owner vision-team --description "Image classifier"
  drover model push ./resnet-50 --model resnet --card CARD.md
  drover model alias set resnet prod 1
  drover model pull resnet@prod ./resnet
  drover model show resnet`,
	},
		newModelCreateCommand(g),
		newModelListCommand(g),
		newModelShowCommand(g),
		newModelRemoveCommand(g),
		newModelPushCommand(g),
		newModelPullCommand(g),
		newVersionCommand(g),
		newAliasCommand(g),
		newModelCardCommand(g),
	)
}

func newModelCreateCommand(g *globals) *cobra.Command {
	var (
		description, owner string
		tags               []string
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a model",
		Long: `Create a model: a name under which versions are registered.

The owner and tags are free-form; tags are KEY=VALUE and --tag may be
repeated. Use them for what you want to find models by, such as team, task
or licence.`,
		Example: `  drover model create resnet
  drover model create resnet --description "ImageNet classifier" --owner vision-team \
    --tag task=classification --tag licence=apache-2.0`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			tagMap, err := parseKeyValues("tag", tags)
			if err != nil {
				return usageErr(cmd, err)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.model.CreateModel(cmd.Context(), connect.NewRequest(&droverv1.CreateModelRequest{
				Name: args[0], Description: description, Owner: owner, Tags: tagMap,
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Created model %s (index %d)\n", resp.Msg.GetModel().GetName(), resp.Msg.GetMeta().GetIndex())
			})
		},
	}
	cmd.Flags().StringVar(&description, "description", "", "what the model does")
	cmd.Flags().StringVar(&owner, "owner", "", "who answers for the model: a team or a person")
	// StringArray, not StringSlice: a slice flag splits on commas, and tag
	// values may contain them.
	cmd.Flags().StringArrayVar(&tags, "tag", nil, "tag as `KEY=VALUE` (repeatable)")
	return cmd
}

func newModelListCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:     "ls",
		Aliases: []string{"list"},
		Short:   "List models",
		Long: `List models by name, with their latest version number and aliases.

The answer carries the state index it was read at (see -o json, meta.index);
pass it to --index to wait until the registry changes.`,
		Example: `  drover model ls
  drover model ls -o json | jq -r '.models[].name'

  # Wait up to a minute for any change after index 40:
  drover model ls --index 40 --wait 1m`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			resp, err := c.model.ListModels(cmd.Context(), connect.NewRequest(&droverv1.ListModelsRequest{Options: opts}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				models := slices.Clone(resp.Msg.GetModels())
				slices.SortFunc(models, func(a, b *droverv1.Model) int { return cmp.Compare(a.GetName(), b.GetName()) })
				row(w, "NAME", "LATEST", "ALIASES", "OWNER", "CREATED", "AGE")
				for _, m := range models {
					row(w, m.GetName(), latestCell(m.GetLatestVersion()), orDash(formatPairs(m.GetAliases(), formatUint)),
						orDash(m.GetOwner()), formatTime(m.GetCreateTime()), formatAge(m.GetCreateTime(), g.now()))
				}
			})
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func latestCell(v uint64) string {
	if v == 0 {
		return "-"
	}
	return strconv.FormatUint(v, 10)
}

func newModelShowCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a model, its aliases and its versions",
		Long: `Show a model's fields, where its aliases point, and its versions.

-o json prints the model alone (GetModelResponse); for the versions as JSON
use ` + "`drover model version ls NAME -o json`" + `.`,
		Example: `  drover model show resnet
  drover model show resnet -o json`,
		Args: exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, opts, err := g.readClients(cmd, &q)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			resp, err := c.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: args[0], Options: opts}))
			if err != nil {
				return err
			}
			var versions []*droverv1.ModelVersion
			if outputFormat(cmd) == outputTable {
				vr, err := c.model.ListVersions(ctx, connect.NewRequest(&droverv1.ListVersionsRequest{Model: args[0]}))
				if err != nil {
					return err
				}
				versions = vr.Msg.GetVersions()
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) { modelView(w, resp.Msg.GetModel(), versions, g) })
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}

func modelView(w io.Writer, m *droverv1.Model, versions []*droverv1.ModelVersion, g *globals) {
	field(w, "Name", m.GetName())
	field(w, "Description", m.GetDescription())
	field(w, "Owner", m.GetOwner())
	field(w, "Tags", formatPairs(m.GetTags(), formatString))
	field(w, "Latest version", latestCell(m.GetLatestVersion()))
	created := formatTimeAge(m.GetCreateTime(), g.now())
	if by := m.GetCreatedBy(); by != "" {
		created += " by " + by
	}
	field(w, "Created", created)
	field(w, "Index", fmt.Sprintf("created %d, modified %d", m.GetCreateIndex(), m.GetModifyIndex()))

	fmt.Fprintln(w)
	if len(m.GetAliases()) == 0 {
		fmt.Fprintf(w, "No aliases; point one at a version with `drover model alias set %s ALIAS VERSION`.\n", m.GetName())
	} else {
		row(w, "ALIAS", "VERSION")
		for _, a := range slices.Sorted(maps.Keys(m.GetAliases())) {
			row(w, a, formatUint(m.GetAliases()[a]))
		}
	}

	fmt.Fprintln(w)
	if len(versions) == 0 {
		fmt.Fprintf(w, "No versions; register one with `drover model version create %s --digest … --size …`.\n", m.GetName())
		return
	}
	byVersion := aliasesByVersion(m.GetAliases())
	versionTable(w, versions, byVersion, g)
}

// aliasesByVersion inverts a model's alias map for the ALIASES column.
func aliasesByVersion(aliases map[string]uint64) map[uint64]string {
	inv := map[uint64][]string{}
	for _, a := range slices.Sorted(maps.Keys(aliases)) {
		inv[aliases[a]] = append(inv[aliases[a]], a)
	}
	out := make(map[uint64]string, len(inv))
	for v, as := range inv {
		out[v] = strings.Join(as, ",")
	}
	return out
}

func newModelRemoveCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a model and all its versions",
		Long: `Delete a model with all its versions and aliases.

The server refuses while a deployment still uses the model. Version numbers
are not reused even if a model of the same name is created again.`,
		Example: `  drover model rm resnet-old`,
		Args:    exactArgs("NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			resp, err := c.model.DeleteModel(cmd.Context(), connect.NewRequest(&droverv1.DeleteModelRequest{Name: args[0]}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "Deleted model %s (index %d)\n", args[0], resp.Msg.GetMeta().GetIndex())
			})
		},
	}
}

func newModelCardCommand(g *globals) *cobra.Command {
	var q queryFlags
	cmd := &cobra.Command{
		Use:   "card NAME[@REF]",
		Short: "Print a version's model card (Markdown)",
		Long: `Print a version's model card exactly as stored: Markdown describing what the
model is for, how it was trained and evaluated, and its limits. It prints
no table, so it pipes into a Markdown viewer.

REF is a version number, an alias or latest (the default).`,
		Example: `  drover model card resnet@prod
  drover model card resnet@3 | glow -`,
		Args: exactArgs("NAME[@REF]"),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := fetchVersion(cmd, g, &q, args[0])
			if err != nil {
				return err
			}
			if outputFormat(cmd) == outputJSON {
				return printResult(cmd, resp.Msg, nil)
			}
			card := resp.Msg.GetVersion().GetCard()
			if card == "" {
				fmt.Fprintf(g.stderr, "%s@%d has no model card.\n", resp.Msg.GetVersion().GetModel(), resp.Msg.GetVersion().GetVersion())
				return nil
			}
			if !strings.HasSuffix(card, "\n") {
				card += "\n"
			}
			_, err = io.WriteString(cmd.OutOrStdout(), card)
			return err
		},
	}
	addReadFlags(cmd, g, &q)
	return cmd
}
