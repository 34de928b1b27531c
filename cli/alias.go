package cli

import (
	"fmt"
	"io"

	"connectrpc.com/connect"
	"github.com/spf13/cobra"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func newAliasCommand(g *globals) *cobra.Command {
	return newGroup(&cobra.Command{
		Use:   "alias",
		Short: "Point named aliases (prod, canary, …) at versions",
		Long: `Point aliases at versions. An alias is a movable name, such as prod or
canary, for one version number of a model. Deployments and NAME@ALIAS
references follow it, so moving an alias is how a version is promoted or
rolled back. Every move is in the audit log with the previous version.`,
		Example: `  drover model alias set resnet prod 4
  drover model alias rm resnet canary`,
	}, newAliasSetCommand(g), newAliasRemoveCommand(g))
}

func newAliasSetCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "set NAME ALIAS VERSION",
		Short: "Point an alias at a version, creating or moving it",
		Long: `Point ALIAS of model NAME at VERSION, creating the alias or moving it, and
print where it pointed before.

VERSION is a version number, or a reference that is resolved once, now: an
alias or latest. "set resnet prod canary" promotes whatever canary points
at to prod; the two aliases are independent afterwards.`,
		Example: `  drover model alias set resnet prod 4
  drover model alias set resnet prod canary     # promote canary
  drover model alias set resnet prod 3          # roll back`,
		Args: exactArgs("NAME", "ALIAS", "VERSION"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, alias, target := args[0], args[1], args[2]
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			version, ok := parseVersionNumber(target)
			if !ok {
				vr, err := c.model.GetVersion(ctx, connect.NewRequest(&droverv1.GetVersionRequest{Model: name, Ref: target}))
				if err != nil {
					return err
				}
				version = vr.Msg.GetVersion().GetVersion()
			}
			resp, err := c.model.SetAlias(ctx, connect.NewRequest(&droverv1.SetAliasRequest{
				Model: name, Alias: alias, Version: version,
			}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				fmt.Fprintf(w, "%s@%s: %s → %d\n", name, alias, previousCell(resp.Msg.GetPreviousVersion()), version)
			})
		},
	}
}

func previousCell(v uint64) string {
	if v == 0 {
		return "(new)"
	}
	return formatUint(v)
}

func newAliasRemoveCommand(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:     "rm NAME ALIAS",
		Aliases: []string{"delete"},
		Short:   "Remove an alias",
		Long: `Remove ALIAS from model NAME and print the version it pointed at. The
version itself stays; only the name goes. The server refuses while a
deployment follows the alias.`,
		Example: `  drover model alias rm resnet canary`,
		Args:    exactArgs("NAME", "ALIAS"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, alias := args[0], args[1]
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			// The delete response does not say what the alias pointed at;
			// read it first so the operator sees what they undid. A change
			// in between is possible but harmless: the audit log has it.
			mr, err := c.model.GetModel(ctx, connect.NewRequest(&droverv1.GetModelRequest{Name: name}))
			if err != nil {
				return err
			}
			old, known := mr.Msg.GetModel().GetAliases()[alias]
			resp, err := c.model.DeleteAlias(ctx, connect.NewRequest(&droverv1.DeleteAliasRequest{Model: name, Alias: alias}))
			if err != nil {
				return err
			}
			return printResult(cmd, resp.Msg, func(w io.Writer) {
				from := "?"
				if known {
					from = formatUint(old)
				}
				fmt.Fprintf(w, "%s@%s: %s → (removed)\n", name, alias, from)
			})
		},
	}
}
