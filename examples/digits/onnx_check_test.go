package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// checkScript runs ONNX's own checker (with shape inference) on a model
// directory, then evaluates the graph node by node in float32 with numpy,
// as a runtime would, and compares the results with reference.json.
const checkScript = `
import json, sys
import numpy as np
import onnx
from onnx import numpy_helper
d = sys.argv[1]
m = onnx.load(d + "/model.onnx")
onnx.checker.check_model(m, full_check=True)
onnx.shape_inference.infer_shapes(m, strict_mode=True)
env0 = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
ref = json.load(open(d + "/reference.json"))
assert [i.name for i in m.graph.input] == [ref["input"]], m.graph.input
assert [o.name for o in m.graph.output] == [ref["output"]], m.graph.output
for c in ref["cases"]:
    env = dict(env0)
    env[ref["input"]] = np.array([c["input"]], dtype=np.float32)
    for n in m.graph.node:
        a = [env[x] for x in n.input]
        if n.op_type == "Gemm":
            r = a[0] @ a[1] + a[2]
        elif n.op_type == "Relu":
            r = np.maximum(a[0], 0)
        elif n.op_type == "Softmax":
            e = np.exp(a[0] - a[0].max(axis=1, keepdims=True))
            r = e / e.sum(axis=1, keepdims=True)
        else:
            sys.exit("unexpected op " + n.op_type)
        env[n.output[0]] = r.astype(np.float32)
    diff = np.abs(env[ref["output"]][0] - np.array(c["probabilities"])).max()
    if diff > ref["tolerance"]:
        sys.exit("case of label %d: off by %g" % (c["label"], diff))
`

// TestONNXCheckerAcceptsExport checks an exported model with the ONNX
// project's own Python package, where one is installed (Debian:
// python3-onnx); elsewhere it is skipped.
func TestONNXCheckerAcceptsExport(t *testing.T) {
	python := ""
	for _, p := range []string{"python3", "/usr/bin/python3"} {
		// Import the submodules the check uses, not just "onnx":
		// libonnx-testdata installs a bare onnx/backend/test tree into
		// dist-packages, which Python imports as an empty namespace package.
		if exec.Command(p, "-c", "import numpy, onnx.checker, onnx.numpy_helper").Run() == nil {
			python = p
			break
		}
	}
	if python == "" {
		t.Skip("no python3 with the onnx package (apt-get install python3-onnx)")
	}
	train, test := split(syntheticDigits(300, 4), 0.2, splitSeed)
	m := newMLP([]int{numFeatures, 20, 12, numClasses}, 1)
	m.fit(inputMatrix(train.x), train.y, trainConfig{epochs: 2, batch: 32, lr: 0.001, seed: 1}, nil)
	dir := filepath.Join(t.TempDir(), "model")
	if err := export(dir, m, test, cardInfo{Name: "check", Data: "generated"}); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(python, "-c", checkScript, dir).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", python, err, out)
	}
}
