package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/buildinfo"
)

// versionJSON is `drover version -o json`, in the API's lowerCamelCase.
type versionJSON struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"goVersion"`
}

// newDroverVersionCommand prints this binary's build; `drover --version`
// prints the same line.
func newDroverVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print drover's version, commit and Go version",
		Long: `Print the version of this drover binary, the commit it was built from
(", modified" when the tree had uncommitted changes) and the Go toolchain
that built it. It talks to no server; ` + "`drover status -o json`" + ` shows each
server's version.`,
		Example: `  drover version
  drover --version
  drover version -o json`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, _ []string) error {
			info := buildinfo.Read()
			return printVersion(cmd.OutOrStdout(), outputFormat(cmd), info)
		},
	}
}

func printVersion(w io.Writer, format string, info buildinfo.Info) error {
	if format == outputJSON {
		b, err := json.MarshalIndent(versionJSON{info.Version, info.Commit, info.Modified, info.GoVersion}, "", "  ")
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	_, err := fmt.Fprintf(w, "drover %s\n", info)
	return err
}
