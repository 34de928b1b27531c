package cli

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

func TestParseKeyValues(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      []string
		want    map[string]string
		wantErr string
	}{
		{nil, nil, ""},
		{[]string{"team=cv", "url=a=b", "empty="}, map[string]string{"team": "cv", "url": "a=b", "empty": ""}, ""},
		{[]string{"list=a,b"}, map[string]string{"list": "a,b"}, ""},
		{[]string{"team"}, nil, "--tag team: want KEY=VALUE"},
		{[]string{"=x"}, nil, "--tag =x: key is empty"},
		{[]string{" k=x"}, nil, "--tag  k=x: key has surrounding spaces"},
		{[]string{"a=1", "a=2"}, nil, `--tag a=2: key "a" given twice`},
	}
	for _, tt := range tests {
		got, err := parseKeyValues("tag", tt.in)
		if errString(err) != tt.wantErr || !maps.Equal(got, tt.want) {
			t.Errorf("parseKeyValues(%q) = %v, %v; want %v, %q", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      []string
		want    map[string]float64
		wantErr string
	}{
		{[]string{"top1=0.812", "loss=1e-3", "n=-2"}, map[string]float64{"top1": 0.812, "loss": 0.001, "n": -2}, ""},
		{[]string{"accuracy=high"}, nil, "--metric accuracy=high: value must be a number"},
		{[]string{"accuracy="}, nil, "--metric accuracy=: value must be a number"},
		{[]string{"x=NaN"}, nil, "--metric x=NaN: value must be a finite number"},
		{[]string{"x=+Inf"}, nil, "--metric x=+Inf: value must be a finite number"},
		{[]string{"accuracy"}, nil, "--metric accuracy: want KEY=VALUE"},
		{[]string{"a=1", "a=2"}, nil, `--metric a=2: key "a" given twice`},
	}
	for _, tt := range tests {
		got, err := parseMetrics("metric", tt.in)
		if errString(err) != tt.wantErr || !maps.Equal(got, tt.want) {
			t.Errorf("parseMetrics(%q) = %v, %v; want %v, %q", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseModelRef(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in, name, ref, wantErr string
	}{
		{"resnet", "resnet", "latest", ""},
		{"resnet@3", "resnet", "3", ""},
		{"resnet@prod", "resnet", "prod", ""},
		{"resnet@latest", "resnet", "latest", ""},
		{"@3", "", "", `"@3": model name is empty; want NAME or NAME@REF`},
		{"", "", "", `"": model name is empty; want NAME or NAME@REF`},
		{"resnet@", "", "", `"resnet@": nothing after @; want a version number, an alias or latest`},
		{"a@b@c", "", "", `"a@b@c": more than one @; want NAME@REF`},
	}
	for _, tt := range tests {
		name, ref, err := parseModelRef(tt.in)
		if name != tt.name || ref != tt.ref || errString(err) != tt.wantErr {
			t.Errorf("parseModelRef(%q) = %q, %q, %v; want %q, %q, %q", tt.in, name, ref, err, tt.name, tt.ref, tt.wantErr)
		}
	}
}

func TestParseDigest(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, wantErr string }{
		{testDigest, ""},
		{"md5:abc", "want sha256:<64 hex digits>"},
		{"sha256:abc", "want 64 hex digits after sha256:, got 3"},
		{"sha256:" + strings.Repeat("A", 64), `'A' is not a lowercase hex digit`},
	}
	for _, tt := range tests {
		_, err := parseDigest(tt.in)
		if errString(err) != tt.wantErr {
			t.Errorf("parseDigest(%q) = %v, want %q", tt.in, err, tt.wantErr)
		}
	}
}

func TestParseFileSpec(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in      string
		want    *droverv1.ArtifactFile
		wantErr string
	}{
		{"model.onnx=" + testDigest + ":1024", &droverv1.ArtifactFile{Path: "model.onnx", Digest: testDigest, SizeBytes: 1024}, ""},
		{"dir/a=b.bin=" + testDigest + ":0", &droverv1.ArtifactFile{Path: "dir/a=b.bin", Digest: testDigest, SizeBytes: 0}, ""},
		{"model.onnx", nil, "--file model.onnx: want PATH=sha256:HEX:SIZE"},
		{"=" + testDigest + ":1", nil, "--file =" + testDigest + ":1: path is empty"},
		{"m=" + testDigest, nil, "--file m=" + testDigest + ": want PATH=sha256:HEX:SIZE"},
		{"m=sha1:abc:3", nil, "--file m=sha1:abc:3: digest: want sha256:<64 hex digits>"},
		{"m=" + testDigest + ":12k", nil, "--file m=" + testDigest + ":12k: size must be a whole number of bytes"},
	}
	for _, tt := range tests {
		got, err := parseFileSpec("file", tt.in)
		if errString(err) != tt.wantErr || !proto.Equal(got, tt.want) {
			t.Errorf("parseFileSpec(%q) = %v, %v; want %v, %q", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestNormalizeAddress(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want, wantErr string }{
		{"127.0.0.1:7400", "https://127.0.0.1:7400", ""},
		{"localhost:7400", "https://localhost:7400", ""},
		{"[::1]:7400", "https://[::1]:7400", ""},
		{"https://drover.example.com/", "https://drover.example.com", ""},
		{" http://10.0.0.1:7400 ", "", `server address " http://10.0.0.1:7400 ": Drover servers speak only HTTPS: use https://10.0.0.1:7400`},
		{"HTTP://10.0.0.1:7400/", "", `server address "HTTP://10.0.0.1:7400/": Drover servers speak only HTTPS: use https://10.0.0.1:7400`},
		{"", "", "server address is empty"},
		{"ftp://x:1", "", `server address "ftp://x:1": scheme must be https, not "ftp"`},
		{"https://x:1/api", "", `server address "https://x:1/api": want only scheme, host and port, not the path "/api"`},
		{"https://", "", `server address "https://": no host`},
	}
	for _, tt := range tests {
		got, err := normalizeAddress(tt.in)
		if got != tt.want || errString(err) != tt.wantErr {
			t.Errorf("normalizeAddress(%q) = %q, %v; want %q, %q", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestCheckToken(t *testing.T) {
	t.Parallel()
	for _, tok := range []string{"", "abc-123", "s3cr3t/with+symbols="} {
		if err := checkToken(tok); err != nil {
			t.Errorf("checkToken(%q) = %v", tok, err)
		}
	}
	for _, tok := range []string{"abc\n", "a b", "\tx"} {
		if err := checkToken(tok); err == nil {
			t.Errorf("checkToken(%q) accepted it", tok)
		}
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestParseByteSize(t *testing.T) {
	t.Parallel()
	const unitErr = `; want B, KB, MB, GB, TB, PB (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024)`
	const sizeErr = "want a size such as 40GiB, 80G, 512MiB or a number of bytes"
	tests := []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{"0", 0, ""},
		{"85899345920", 80 << 30, ""},
		{"40GiB", 40 << 30, ""},
		{"40gib", 40 << 30, ""},
		{"40Gi", 40 << 30, ""},
		{"80G", 80e9, ""},
		{"80GB", 80e9, ""},
		{"80 GB", 80e9, ""},
		{" 512MiB ", 512 << 20, ""},
		{"512M", 512e6, ""},
		{"1KiB", 1024, ""},
		{"1k", 1000, ""},
		{"100B", 100, ""},
		{"1.5GiB", 3 << 29, ""},
		{"1.5TB", 15e11, ""},
		{".5KiB", 512, ""},
		{"1.1KiB", 1127, ""}, // 1126.4 rounds up
		{"2PiB", 2 << 50, ""},
		{"18446744073709551615", 1<<64 - 1, ""},
		{"18446744073709551616", 0, "too large: the most is 16 EiB"},
		{"16384PiB", 0, "too large: the most is 16 EiB"},
		{"", 0, sizeErr},
		{"GiB", 0, sizeErr},
		{"-1GiB", 0, sizeErr},
		{"1.2.3G", 0, sizeErr},
		{".", 0, sizeErr},
		{"1e9", 0, `unknown unit "e9"` + unitErr},
		{"40XB", 0, `unknown unit "XB"` + unitErr},
		{"40 GiBs", 0, `unknown unit "GiBs"` + unitErr},
		{"0x10", 0, `unknown unit "x10"` + unitErr},
	}
	for _, tt := range tests {
		got, err := parseByteSize(tt.in)
		if got != tt.want || errString(err) != tt.wantErr {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d, %q", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestParseLabelChanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		args, remove []string
		set          map[string]string
		rm           []string
		wantErr      string
	}{
		{[]string{"pool=training", "note=a=b", "empty="}, nil, map[string]string{"pool": "training", "note": "a=b", "empty": ""}, nil, ""},
		{nil, []string{"spare", "zone", "spare"}, nil, []string{"spare", "zone"}, ""},
		{[]string{"pool=x"}, []string{"zone"}, map[string]string{"pool": "x"}, []string{"zone"}, ""},
		{nil, nil, nil, nil, "nothing to change: give KEY=VALUE arguments to set labels or --remove KEY to remove them"},
		{[]string{"pool"}, nil, nil, nil, `"pool": want KEY=VALUE to set a label; to remove one, use --remove pool`},
		{[]string{"spare-"}, nil, nil, nil, `"spare-": want KEY=VALUE to set a label; to remove one, use --remove spare`},
		{[]string{"=x"}, nil, nil, nil, `"=x": label key is empty`},
		{[]string{" k=x"}, nil, nil, nil, `" k=x": label key has surrounding spaces`},
		{[]string{"a=1", "a=2"}, nil, nil, nil, `"a=2": label "a" given twice`},
		{[]string{"a=1"}, []string{"a"}, nil, nil, `label "a" is both set and removed; give one or the other`},
		{nil, []string{"a=1"}, nil, nil, "--remove a=1: want only the label key, without a value"},
		{nil, []string{""}, nil, nil, "--remove: label key is empty"},
	}
	for _, tt := range tests {
		set, rm, err := parseLabelChanges(tt.args, tt.remove)
		if errString(err) != tt.wantErr || !maps.Equal(set, tt.set) || !slices.Equal(rm, tt.rm) {
			t.Errorf("parseLabelChanges(%q, %q) = %v, %q, %v; want %v, %q, %q", tt.args, tt.remove, set, rm, err, tt.set, tt.rm, tt.wantErr)
		}
	}
}
