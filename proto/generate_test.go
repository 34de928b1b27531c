package proto_test

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The generated Go code is checked in; this test regenerates it into a
// temporary directory with the pinned tools and fails when the two differ,
// so a schema change can never land without its code.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if os.Getenv("DROVER_PROTO_CHECK") != "1" {
		t.Skip("set DROVER_PROTO_CHECK=1 (make proto-check) to run: it builds the pinned buf, which takes minutes on a fresh machine")
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "generate", "-o", out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	fresh := map[string][]byte{}
	genRoot := filepath.Join(out, "proto")
	err = filepath.WalkDir(genRoot, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(genRoot, path)
		b, err := os.ReadFile(path)
		fresh[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	checkedIn := map[string][]byte{}
	err = filepath.WalkDir(filepath.Join(root, "proto"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return err
		}
		rel, _ := filepath.Rel(filepath.Join(root, "proto"), path)
		b, err := os.ReadFile(path)
		checkedIn[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range fresh {
		got, ok := checkedIn[name]
		if !ok {
			t.Errorf("%s is generated but not checked in: run make proto", name)
		} else if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run make proto and commit the result", name)
		}
	}
	for name := range checkedIn {
		if _, ok := fresh[name]; !ok {
			t.Errorf("%s is checked in but no longer generated: delete it", name)
		}
	}
}
