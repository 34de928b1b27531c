package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/droverhq/drover/internal/atomicfile"
)

// ClientConfig is where the command line finds a server and how it proves who
// it is. In the client config file it is a JSON object with the fields
// "address", "token" and "ca_cert"; empty fields are left out.
type ClientConfig struct {
	// Address is the server's API URL, such as https://127.0.0.1:7400.
	Address string `json:"address,omitempty"`
	// Token is the secret of an operator token.
	Token string `json:"token,omitempty"`
	// CACert is the path of a PEM bundle of CAs that sign the server's
	// certificate. A relative path is relative to the config file.
	CACert string `json:"ca_cert,omitempty"`
}

// Environment variables the command line reads.
const (
	envAddress = "DROVER_ADDR"
	envToken   = "DROVER_TOKEN"
	envCACert  = "DROVER_CACERT"
	envConfig  = "DROVER_CONFIG"
)

const defaultAddress = "https://127.0.0.1:7400"

// DefaultClientConfigPath returns where the command line looks for its client
// config file: $DROVER_CONFIG if set, else $XDG_CONFIG_HOME/drover/config.json,
// else ~/.config/drover/config.json. The file need not exist.
func DefaultClientConfigPath() (string, error) {
	path, _, err := clientConfigPath(os.LookupEnv)
	return path, err
}

// clientConfigPath is DefaultClientConfigPath with the environment passed in.
// explicit reports that the path came from DROVER_CONFIG, where a missing
// file is a mistake rather than the normal case.
func clientConfigPath(lookupEnv func(string) (string, bool)) (path string, explicit bool, err error) {
	if p := env(lookupEnv, envConfig); p != "" {
		return p, true, nil
	}
	// The XDG spec says to ignore a relative XDG_CONFIG_HOME.
	if dir := env(lookupEnv, "XDG_CONFIG_HOME"); filepath.IsAbs(dir) {
		return filepath.Join(dir, "drover", "config.json"), false, nil
	}
	home := env(lookupEnv, "HOME")
	if home == "" {
		if home, err = os.UserHomeDir(); err != nil {
			return "", false, fmt.Errorf("client config path: %w", err)
		}
	}
	return filepath.Join(home, ".config", "drover", "config.json"), false, nil
}

// env returns a variable's value; set-but-empty counts as unset, so that
// DROVER_TOKEN= on a command line turns the variable off.
func env(lookupEnv func(string) (string, bool), name string) string {
	v, _ := lookupEnv(name)
	return v
}

// clientConfigFields are the JSON field names a client config file may hold.
var clientConfigFields = []string{"address", "token", "ca_cert"}

// readClientConfig parses a client config file. Unknown fields are errors
// that name the field, because a misspelt "adress" would otherwise be
// silently ignored and the command would talk to the default server.
func readClientConfig(path string) (ClientConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return ClientConfig{}, fmt.Errorf("read client config: %w", err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(data, &raw); err != nil {
		return ClientConfig{}, fmt.Errorf("client config %s: %w", path, jsonError(data, err))
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if !slices.Contains(clientConfigFields, k) {
			return ClientConfig{}, fmt.Errorf("client config %s: unknown field %q (known fields: %s)",
				path, k, strings.Join(clientConfigFields, ", "))
		}
	}
	var c ClientConfig
	if err := json.Unmarshal(data, &c); err != nil {
		return ClientConfig{}, fmt.Errorf("client config %s: %w", path, jsonError(data, err))
	}
	if c.CACert != "" && !filepath.IsAbs(c.CACert) {
		c.CACert = filepath.Join(filepath.Dir(path), c.CACert)
	}
	return c, nil
}

// jsonError rewrites encoding/json's errors in terms a person editing the
// file can act on: a line number, or the field with the wrong type.
func jsonError(data []byte, err error) error {
	var syn *json.SyntaxError
	if errors.As(err, &syn) {
		line := 1 + bytes.Count(data[:min(int(syn.Offset), len(data))], []byte("\n"))
		return fmt.Errorf("line %d: %w", line, err)
	}
	var typ *json.UnmarshalTypeError
	if errors.As(err, &typ) {
		if typ.Field == "" {
			return fmt.Errorf("want a JSON object, got %s", typ.Value)
		}
		return fmt.Errorf("field %q: want a %s, got %s", typ.Field, typ.Type, typ.Value)
	}
	return err
}

// WriteClientConfig writes c to path as a client config file, readable only
// by its owner because it may hold a token. It replaces the file atomically,
// so a reader sees the old file or the new one, never a torn one, and it
// creates missing parent directories (mode 0700).
func WriteClientConfig(path string, c ClientConfig) error {
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return fmt.Errorf("write client config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("write client config: %w", err)
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write client config: %w", err)
	}
	return nil
}

// loadClientConfig reads the client config file if there is one. A missing
// file at the default location is normal; a missing file named by
// DROVER_CONFIG is an error.
func loadClientConfig(lookupEnv func(string) (string, bool)) (ClientConfig, error) {
	path, explicit, err := clientConfigPath(lookupEnv)
	if err != nil {
		// Without a home directory there is no default file to read.
		return ClientConfig{}, nil
	}
	c, err := readClientConfig(path)
	if errors.Is(err, fs.ErrNotExist) {
		if !explicit {
			return ClientConfig{}, nil
		}
		return ClientConfig{}, withHint(err, "the file is named by "+envConfig+"; create it or unset the variable")
	}
	return c, err
}
