package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/droverhq/drover/internal/pki"
)

func newTLSCommand(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create the cluster's TLS material",
		Long: `Create the TLS material a cluster needs. Drover uses mutual TLS everywhere:
servers prove themselves to each other and to clients with certificates from
one cluster CA.`,
		Example: `  drover tls ca create --dir ./ca`,
		Args:    groupArgs,
		RunE:    showHelp,
	}
	ca := &cobra.Command{
		Use:   "ca",
		Short: "Manage the cluster CA",
		Long: `The cluster CA signs every server's certificate (and, later, every agent's).
Its certificate is what clients pass as --ca-cert.`,
		Example: `  drover tls ca create --dir ./ca`,
		Args:    groupArgs,
		RunE:    showHelp,
	}
	var dir string
	var days int
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a cluster CA (ca.pem and ca-key.pem)",
		Long: `Create the certificate authority a multi-server cluster shares. Every server
gets both files (--ca-file, --ca-key-file) and issues its own certificate from
them at start; clients need only ca.pem (--ca-cert). Keep ca-key.pem secret.`,
		Example: `  drover tls ca create --dir /etc/drover/ca`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ca-key.pem")
			for _, p := range []string{certFile, keyFile} {
				if _, err := os.Stat(p); err == nil {
					return fmt.Errorf("%s already exists: refusing to replace a CA (servers and agents trust it); choose another --dir", p)
				} else if !errors.Is(err, os.ErrNotExist) {
					return err
				}
			}
			if days <= 0 {
				return usageErr(cmd, fmt.Errorf("--days %d: must be positive", days))
			}
			if err := os.MkdirAll(dir, 0o700); err != nil {
				return err
			}
			c, err := pki.NewCA("Drover cluster CA", time.Duration(days)*24*time.Hour)
			if err != nil {
				return err
			}
			if err := c.WriteFiles(certFile, keyFile); err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "created %s and %s\nCA sha256: %s\n", certFile, keyFile, c.Fingerprint())
			return nil
		},
	}
	create.Flags().StringVar(&dir, "dir", ".", "directory to write ca.pem and ca-key.pem into")
	create.Flags().IntVar(&days, "days", 3650, "validity of the CA in days")
	ca.AddCommand(create)
	cmd.AddCommand(ca)
	return cmd
}
