package cli

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

func TestReadClientConfig(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		name, body string
		want       ClientConfig
		wantErr    string // after "client config PATH: "
	}{
		{"full", `{"address": "https://10.0.0.1:7400", "token": "t", "ca_cert": "/etc/ca.pem"}`,
			ClientConfig{Address: "https://10.0.0.1:7400", Token: "t", CACert: "/etc/ca.pem"}, ""},
		{"relative CA is next to the file", `{"ca_cert": "ca.pem"}`, ClientConfig{CACert: filepath.Join(dir, "ca.pem")}, ""},
		{"empty object", `{}`, ClientConfig{}, ""},
		{"null field", `{"token": null}`, ClientConfig{}, ""},
		{"unknown field", `{"address": "x", "adress": "y"}`, ClientConfig{},
			`unknown field "adress" (known fields: address, token, ca_cert)`},
		{"wrong type", `{"token": 42}`, ClientConfig{}, `field "token": want a string, got number`},
		{"not an object", `["x"]`, ClientConfig{}, `want a JSON object, got array`},
		{"syntax error", "{\n  \"token\": \"t\",\n}", ClientConfig{}, "line 3: invalid character '}' looking for beginning of object key string"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, "c"+string(rune('a'+i))+".json")
			if err := os.WriteFile(path, []byte(tt.body), 0o600); err != nil {
				t.Fatal(err)
			}
			got, err := readClientConfig(path)
			wantErr := ""
			if tt.wantErr != "" {
				wantErr = "client config " + path + ": " + tt.wantErr
			}
			if got != tt.want || errString(err) != wantErr {
				t.Errorf("readClientConfig = %+v, %v; want %+v, %q", got, err, tt.want, wantErr)
			}
		})
	}
}

func TestWriteClientConfig(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "new", "drover", "config.json")
	want := ClientConfig{Address: "https://127.0.0.1:7400", Token: "secret", CACert: "/abs/ca.pem"}
	if err := WriteClientConfig(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := readClientConfig(path)
	if err != nil || got != want {
		t.Fatalf("read back %+v, %v; want %+v", got, err, want)
	}
	if runtime.GOOS != "windows" {
		st, _ := os.Stat(path)
		if st.Mode().Perm() != 0o600 {
			t.Errorf("mode = %v, want 0600", st.Mode().Perm())
		}
	}
	// Replacing leaves no temporary files and drops emptied fields.
	if err := WriteClientConfig(path, ClientConfig{Address: "https://10.0.0.1:7400"}); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	if strings.Contains(string(data), "token") {
		t.Errorf("empty token written: %s", data)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only config.json", len(entries))
	}
}

func TestClientConfigPath(t *testing.T) {
	t.Parallel()
	tests := []struct {
		env      map[string]string
		want     string
		explicit bool
	}{
		{map[string]string{envConfig: "/x/c.json", "XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}, "/x/c.json", true},
		{map[string]string{"XDG_CONFIG_HOME": "/xdg", "HOME": "/home/u"}, "/xdg/drover/config.json", false},
		{map[string]string{"XDG_CONFIG_HOME": "relative", "HOME": "/home/u"}, "/home/u/.config/drover/config.json", false},
		{map[string]string{envConfig: "", "HOME": "/home/u"}, "/home/u/.config/drover/config.json", false},
	}
	for _, tt := range tests {
		got, explicit, err := clientConfigPath(func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok })
		if err != nil || got != filepath.FromSlash(tt.want) || explicit != tt.explicit {
			t.Errorf("clientConfigPath(%v) = %q, %v, %v; want %q, %v", tt.env, got, explicit, err, tt.want, tt.explicit)
		}
	}
}
