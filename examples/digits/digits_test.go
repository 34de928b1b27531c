package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeDigitsCSV writes d as scikit-learn's digits.csv.gz and returns its
// path.
func writeDigitsCSV(t *testing.T, d dataset) string {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	for i, x := range d.x {
		for _, v := range x {
			fmt.Fprintf(zw, "%g,", v)
		}
		fmt.Fprintf(zw, "%d\n", d.y[i])
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "digits.csv.gz")
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLoadDigits(t *testing.T) {
	want := syntheticDigits(50, 1)
	got, err := loadDigits(writeDigitsCSV(t, want))
	if err != nil {
		t.Fatal(err)
	}
	if got.len() != want.len() || fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("read back %d images unlike the %d written", got.len(), want.len())
	}

	_, err = loadDigits(filepath.Join(t.TempDir(), "missing.csv.gz"))
	if err == nil || !strings.Contains(err.Error(), "apt-get install python3-sklearn") {
		t.Errorf("missing data set: %v, want the package to install named", err)
	}

	row := strings.Repeat("0,", numFeatures)
	for name, text := range map[string]string{
		"short row":    "1,2,3\n",
		"pixel > 16":   "17," + strings.Repeat("0,", numFeatures-1) + "1\n",
		"label 10":     row + "10\n",
		"label 1.5":    row + "1.5\n",
		"not a number": "x," + strings.Repeat("0,", numFeatures-1) + "1\n",
	} {
		if _, err := parseDigits(strings.NewReader(row + "3\n" + text)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := parseDigits(strings.NewReader("")); err == nil {
		t.Error("no images: accepted")
	}
}

func TestSplitIsFixedAndDisjoint(t *testing.T) {
	d := syntheticDigits(100, 1)
	for i := range d.x {
		d.x[i][0] = float64(i) // tells the images apart
	}
	train, test := split(d, 0.2, 7)
	if train.len() != 80 || test.len() != 20 {
		t.Fatalf("split 100 into %d and %d, want 80 and 20", train.len(), test.len())
	}
	seen := map[float64]bool{}
	for _, x := range append(train.x, test.x...) {
		if seen[x[0]] {
			t.Fatalf("image %v in both sets", x[0])
		}
		seen[x[0]] = true
	}
	_, again := split(d, 0.2, 7)
	if fmt.Sprint(again) != fmt.Sprint(test) {
		t.Error("the same seed gave another split")
	}
}

func TestONNXRoundTrip(t *testing.T) {
	m := newMLP([]int{numFeatures, 7, 5, numClasses}, 1)
	for i := range m.layers {
		for j := range m.layers[i].b {
			m.layers[i].b[j] = float64(j) / 10
		}
	}
	b := encodeONNX(m)
	got, err := decodeONNX(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.widths()) != fmt.Sprint(m.widths()) {
		t.Fatalf("widths %v, want %v", got.widths(), m.widths())
	}
	for i := range m.layers {
		for j, v := range m.layers[i].w.RawMatrix().Data {
			if w := got.layers[i].w.RawMatrix().Data[j]; w != float64(float32(v)) {
				t.Fatalf("layer %d weight %d: read back %v, want %v", i, j, w, float32(v))
			}
		}
		for j, v := range m.layers[i].b {
			if got.layers[i].b[j] != float64(float32(v)) {
				t.Fatalf("layer %d bias %d: read back %v, want %v", i, j, got.layers[i].b[j], float32(v))
			}
		}
	}
	// Weights already float32 survive a second trip bit for bit, which is
	// what keeps a fine-tuned model's frozen layers byte-identical.
	if !bytes.Equal(encodeONNX(got), b) {
		t.Error("encoding the decoded model changed its bytes")
	}
	for _, bad := range [][]byte{b[:len(b)/2], nil, encodeONNX(&mlp{layers: m.layers[1:]})} {
		if _, err := decodeONNX(bad); err == nil {
			t.Errorf("decoded a broken model of %d bytes", len(bad))
		}
	}
}

// TestHeadBytesComeLast checks the layout that makes a head-only update
// cheap to push: a model whose head alone changed differs from the old one
// only in the last bytes of the file.
func TestHeadBytesComeLast(t *testing.T) {
	m := newMLP([]int{numFeatures, 40, 30, numClasses}, 1)
	before := encodeONNX(m)
	head := m.layers[len(m.layers)-1]
	for j := range head.b {
		head.b[j] = 1
	}
	head.w.Set(0, 0, head.w.At(0, 0)+1)
	after := encodeONNX(m)
	if len(after) != len(before) {
		t.Fatalf("%d bytes, then %d", len(before), len(after))
	}
	common := 0
	for common < len(before) && before[common] == after[common] {
		common++
	}
	r, c := head.w.Dims()
	headBytes := 4 * (r*c + len(head.b))
	// What follows the head's tensors: tensor headers, the input and
	// output descriptions and the opset, all small.
	if tail := len(before) - common; tail > headBytes+300 {
		t.Errorf("the first changed byte is %d bytes from the end; the head's tensors hold %d", tail, headBytes)
	}
}

func TestTrainLearns(t *testing.T) {
	train, test := split(syntheticDigits(600, 1), 0.2, 1)
	m := newMLP([]int{numFeatures, 32, numClasses}, 1)
	if acc := m.accuracy(test); acc > 0.5 {
		t.Fatalf("accuracy %.2f before training", acc)
	}
	var losses []float64
	m.fit(inputMatrix(train.x), train.y, trainConfig{epochs: 10, batch: 32, lr: 0.001, seed: 1},
		func(_ int, loss float64) { losses = append(losses, loss) })
	if losses[len(losses)-1] >= losses[0] {
		t.Errorf("loss went from %.3f to %.3f", losses[0], losses[len(losses)-1])
	}
	if acc := m.accuracy(test); acc < 0.9 {
		t.Errorf("test accuracy %.3f after training, want at least 0.9", acc)
	}
}

// TestTrainAndFineTuneHead runs the command as a user would: train and
// export, then retrain the head of the exported model.
func TestTrainAndFineTuneHead(t *testing.T) {
	data := writeDigitsCSV(t, syntheticDigits(500, 2))
	dir := t.TempDir()
	v1, v2 := filepath.Join(dir, "v1"), filepath.Join(dir, "v2")
	var out bytes.Buffer
	if err := run(context.Background(), []string{"-data", data, "-hidden", "24,16", "-epochs", "3", "-out", v1}, &out); err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), []string{"-data", data, "-finetune-head", v1, "-epochs", "5", "-seed", "2", "-out", v2}, &out); err != nil {
		t.Fatal(err)
	}
	t.Log(out.String())
	if !strings.Contains(out.String(), "against "+v1+": size") {
		t.Errorf("fine-tuning reported no delta:\n%s", out.String())
	}

	old, updated := readModel(t, v1), readModel(t, v2)
	last := len(old.layers) - 1
	for i := range old.layers {
		same := slices.Equal(old.layers[i].w.RawMatrix().Data, updated.layers[i].w.RawMatrix().Data) &&
			slices.Equal(old.layers[i].b, updated.layers[i].b)
		if i < last && !same {
			t.Errorf("frozen layer %d changed", i)
		}
		if i == last && same {
			t.Error("the head did not change")
		}
	}

	// reference.json holds what the exported file computes.
	for _, dir := range []string{v1, v2} {
		b, err := os.ReadFile(filepath.Join(dir, referenceFile))
		if err != nil {
			t.Fatal(err)
		}
		var ref reference
		if err := json.Unmarshal(b, &ref); err != nil {
			t.Fatal(err)
		}
		if len(ref.Cases) != referenceCases || ref.Input != "input" || ref.Output != "probabilities" {
			t.Fatalf("%s: %d cases, input %q, output %q", referenceFile, len(ref.Cases), ref.Input, ref.Output)
		}
		m := readModel(t, dir)
		for _, c := range ref.Cases {
			x := make([]float64, len(c.Input))
			for i, v := range c.Input {
				x[i] = float64(v)
			}
			p := m.probabilities(inputMatrix([][]float64{x})).RawRowView(0)
			var sum float64
			for i, v := range c.Probabilities {
				sum += float64(v)
				if math.Abs(float64(v)-p[i]) > 1e-6 {
					t.Fatalf("%s: case of label %d: probability %d is %v, the model gives %v", dir, c.Label, i, v, p[i])
				}
			}
			if math.Abs(sum-1) > 1e-5 {
				t.Errorf("%s: probabilities add up to %v", dir, sum)
			}
		}
		card, err := os.ReadFile(filepath.Join(dir, cardFile))
		if err != nil || !strings.Contains(string(card), "| test accuracy |") {
			t.Errorf("%s: no model card with its accuracy (%v)", dir, err)
		}
	}
}

func readModel(t *testing.T, dir string) *mlp {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, modelFile))
	if err != nil {
		t.Fatal(err)
	}
	m, err := decodeONNX(b)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestFlags(t *testing.T) {
	o, err := parseFlags([]string{"-hidden", "3072, 3072", "-epochs", "2"}, io.Discard)
	if err != nil || fmt.Sprint(o.hidden) != "[3072 3072]" || o.epochs != 2 || o.data != debianDigits {
		t.Fatalf("parsed %+v, %v", o, err)
	}
	for _, args := range [][]string{
		{"-hidden", "32,x"},
		{"-hidden", "0"},
		{"-epochs", "0"},
		{"-finetune-head", "v1", "-hidden", "32"}, // the layers come from v1
		{"extra"},
	} {
		if _, err := parseFlags(args, io.Discard); err == nil {
			t.Errorf("%q: accepted", args)
		}
	}
}
