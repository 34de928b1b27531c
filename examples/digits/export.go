package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// The files of an exported model directory.
const (
	modelFile     = "model.onnx"
	referenceFile = "reference.json"
	cardFile      = "README.md"
)

// referenceCases is how many test images reference.json holds.
const referenceCases = 8

// reference is reference.json: inputs and the probabilities the exported
// model gives them, so that a runtime can be checked against the file.
type reference struct {
	Model     string          `json:"model"`
	Input     string          `json:"input"`
	Output    string          `json:"output"`
	Tolerance float64         `json:"tolerance"`
	Note      string          `json:"note"`
	Cases     []referenceCase `json:"cases,omitempty"`
}

// marshal writes r indented, one case a line, so the file reads well.
func (r reference) marshal() ([]byte, error) {
	cases := r.Cases
	r.Cases = nil
	head, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return nil, err
	}
	b := append(head[:len(head)-2], ",\n  \"cases\": [\n"...) // drop "\n}"
	for i, c := range cases {
		line, err := json.Marshal(c)
		if err != nil {
			return nil, err
		}
		b = append(append(b, "    "...), line...)
		if i < len(cases)-1 {
			b = append(b, ',')
		}
		b = append(b, '\n')
	}
	return append(b, "  ]\n}\n"...), nil
}

type referenceCase struct {
	Label         int       `json:"label"`
	Input         []float32 `json:"input"`
	Probabilities []float32 `json:"probabilities"`
}

// cardInfo is what the model card says beyond the model itself.
type cardInfo struct {
	Name       string
	Data       string // where the images came from
	TrainSize  int
	TestSize   int
	Training   string // how the weights were trained, one line
	Accuracy   float64
	Command    string
	Widths     string // filled by export
	Params     int    // filled by export
	ModelBytes int    // filled by export
}

// export writes m into dir as model.onnx, reference.json (computed from
// the first test images with the weights as read back from model.onnx, so
// that they are exactly the file's) and a model card, README.md.
func export(dir string, m *mlp, test dataset, info cardInfo) error {
	model := encodeONNX(m)
	exported, err := decodeONNX(model)
	if err != nil {
		return fmt.Errorf("read back the exported model: %w", err)
	}
	ref := reference{
		Model: modelFile, Input: inputName, Output: outputName,
		Tolerance: 1e-4,
		Note:      "input: the 64 pixel counts (0..16) of an 8x8 image, row by row; probabilities: one per digit 0..9, computed in float64 from the file's float32 weights",
	}
	cases := test
	cases.x, cases.y = cases.x[:min(referenceCases, test.len())], cases.y[:min(referenceCases, test.len())]
	probs := exported.probabilities(inputMatrix(cases.x))
	for i, x := range cases.x {
		c := referenceCase{Label: cases.y[i]}
		for _, v := range x {
			c.Input = append(c.Input, float32(v))
		}
		for _, p := range probs.RawRowView(i) {
			c.Probabilities = append(c.Probabilities, float32(p))
		}
		ref.Cases = append(ref.Cases, c)
	}
	refJSON, err := ref.marshal()
	if err != nil {
		return err
	}

	var widths []string
	for _, w := range m.widths() {
		widths = append(widths, fmt.Sprint(w))
	}
	info.Widths = strings.Join(widths, " → ")
	info.Params = m.numParams()
	info.ModelBytes = len(model)
	var card strings.Builder
	if err := cardTemplate.Execute(&card, info); err != nil {
		return fmt.Errorf("model card: %w", err)
	}

	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	for name, b := range map[string][]byte{
		modelFile:     model,
		referenceFile: refJSON,
		cardFile:      []byte(card.String()),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return fmt.Errorf("export: %w", err)
		}
	}
	return nil
}

var cardTemplate = template.Must(template.New("card").Parse(`# {{.Name}}

A small multilayer perceptron that reads handwritten digits from 8x8
images, trained by Drover's examples/digits.

## Intended use

Trying Drover: pushing, pulling and serving a real model. Not for
decisions that matter.

## Model

- ` + "`model.onnx`" + `: ONNX, opset 17. Input ` + "`input`" + `, float32 [N, 64]: the pixel
  counts (0..16) of an 8x8 image, row by row. Output ` + "`probabilities`" + `,
  float32 [N, 10]: one per digit, 0 to 9.
- Layers {{.Widths}}, ReLU between them, softmax at the end:
  {{.Params}} parameters, {{.ModelBytes}} bytes.
- ` + "`reference.json`" + `: a few test images with the probabilities this model
  gives them, to check a runtime against.

## Training

- Data: {{.Data}}; {{.TrainSize}} images for training, {{.TestSize}} held out for test.
- {{.Training}}

## Metrics

| metric | value |
| --- | --- |
| test accuracy | {{printf "%.4f" .Accuracy}} ({{.TestSize}} images) |

## Reproduce

` + "```" + `
{{.Command}}
` + "```" + `
`))
