package onnxpb_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// The generated onnx.pb.go is checked in; this regenerates it with the
// pinned tools (make proto-check) and fails when the two differ.
func TestGeneratedCodeIsCurrent(t *testing.T) {
	if os.Getenv("DROVER_PROTO_CHECK") != "1" {
		t.Skip("set DROVER_PROTO_CHECK=1 (make proto-check) to run: it builds the pinned buf, which takes minutes on a fresh machine")
	}
	root, err := filepath.Abs("../../../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	const dir = "agent/runtime/onnx/onnxpb"
	cmd := exec.Command("go", "tool", "-modfile=tools/go.mod", "buf", "generate", dir, "--template", dir+"/buf.gen.yaml", "-o", out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("buf generate: %v\n%s", err, b)
	}
	fresh, err := os.ReadFile(filepath.Join(out, dir, "onnx.pb.go"))
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile("onnx.pb.go")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, fresh) {
		t.Error("onnx.pb.go is stale: run make proto and commit the result")
	}
}
