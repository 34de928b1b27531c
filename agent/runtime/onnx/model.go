package onnx

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/agent/runtime/onnx/onnxpb"
)

// Errors the engine wraps; match them with errors.Is.
var (
	// ErrUnsupportedOp: the model uses an operator (or an attribute value
	// of one) the engine does not implement.
	ErrUnsupportedOp = errors.New("unsupported operator")
	// ErrUnsupportedType: a tensor's element type is not one the engine
	// computes with (strings, float16, bfloat16, complex).
	ErrUnsupportedType = errors.New("unsupported element type")
	// ErrBadModel: the file is not a well-formed ONNX model.
	ErrBadModel = errors.New("bad model")
	// ErrBadInput: an inference input is missing, unknown, or of the wrong
	// type or shape.
	ErrBadInput = errors.New("bad input")
)

// ValueInfo describes a graph input or output. A dimension the model leaves
// open (a symbolic name like "N", or none at all) is -1 in Shape, and its
// name, if any, is in DimNames.
type ValueInfo struct {
	Name     string
	DType    DType
	Shape    []int
	DimNames []string
}

// Model is a loaded ONNX graph, checked against the operators the engine
// implements. Run may be called from many goroutines at once: a Model is
// never written after Load returns.
type Model struct {
	name     string
	opset    int64
	producer string
	inputs   []ValueInfo
	outputs  []ValueInfo
	inits    map[string]*Tensor
	nodes    []*node
	// release[i] lists the values no node after i reads, so Run can drop
	// them and a deep network holds only its live activations.
	release [][]string
}

// node is one operator application with its attributes resolved.
type node struct {
	op      string
	name    string
	inputs  []string
	outputs []string
	attrs   map[string]*onnxpb.AttributeProto
	opset   int64
	run     opFunc
}

// opFunc computes a node's outputs. An optional input the model leaves
// out is nil in in; outputs the node does not produce may be left nil when
// the model does not ask for them (len(n.outputs) says how many it wants).
type opFunc func(n *node, in []*Tensor) ([]*Tensor, error)

// LoadFile reads and loads a model file.
func LoadFile(path string) (*Model, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	m, err := Load(b)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w", path, err)
	}
	return m, nil
}

// Load decodes an ONNX model and prepares it to run. It fails, naming the
// node and the operator, when the graph uses anything the engine does not
// implement, so a bad model is refused at start rather than at the first
// request.
func Load(b []byte) (*Model, error) {
	var mp onnxpb.ModelProto
	if err := proto.Unmarshal(b, &mp); err != nil {
		return nil, fmt.Errorf("%w: not an ONNX protobuf: %v", ErrBadModel, err)
	}
	return FromProto(&mp)
}

// FromProto prepares a decoded model to run.
func FromProto(mp *onnxpb.ModelProto) (*Model, error) {
	g := mp.GetGraph()
	if g == nil {
		return nil, fmt.Errorf("%w: the model has no graph", ErrBadModel)
	}
	m := &Model{name: g.GetName(), producer: mp.GetProducerName(), inits: map[string]*Tensor{}}
	m.opset = -1
	for _, o := range mp.GetOpsetImport() {
		switch o.GetDomain() {
		case "", "ai.onnx":
			m.opset = o.GetVersion()
		}
	}
	if m.opset < 0 {
		if len(mp.GetOpsetImport()) > 0 {
			return nil, fmt.Errorf("%w: the model imports no version of the default (ai.onnx) operator set", ErrBadModel)
		}
		m.opset = 1 // IR version 2 models carried no opset_import
	}
	if len(g.GetSparseInitializer()) > 0 {
		return nil, fmt.Errorf("%w: sparse initializers are not supported", ErrUnsupportedType)
	}
	for _, tp := range g.GetInitializer() {
		t, err := TensorFromProto(tp)
		if err != nil {
			return nil, fmt.Errorf("initializer: %w", err)
		}
		m.inits[tp.GetName()] = t
	}
	defined := map[string]bool{"": true}
	for name := range m.inits {
		defined[name] = true
	}
	for _, vi := range g.GetInput() {
		if _, ok := m.inits[vi.GetName()]; ok {
			continue // older models list initializers as inputs too
		}
		info, err := valueInfo(vi)
		if err != nil {
			return nil, fmt.Errorf("graph input: %w", err)
		}
		m.inputs = append(m.inputs, info)
		defined[info.Name] = true
	}
	ops := operators()
	lastUse := map[string]int{}
	for i, np := range g.GetNode() {
		label := np.GetName()
		if label == "" {
			label = fmt.Sprintf("#%d", i)
		}
		if d := np.GetDomain(); d != "" && d != "ai.onnx" {
			return nil, fmt.Errorf("node %s: %w: %s from operator set %q (only the default ai.onnx set is implemented)", label, ErrUnsupportedOp, np.GetOpType(), d)
		}
		run, ok := ops[np.GetOpType()]
		if !ok {
			return nil, fmt.Errorf("node %s: %w: %s (implemented: %s)", label, ErrUnsupportedOp, np.GetOpType(), strings.Join(Operators(), ", "))
		}
		n := &node{op: np.GetOpType(), name: label, inputs: np.GetInput(), outputs: np.GetOutput(), attrs: map[string]*onnxpb.AttributeProto{}, opset: m.opset, run: run}
		for _, a := range np.GetAttribute() {
			if a.GetRefAttrName() != "" {
				return nil, fmt.Errorf("node %s (%s): %w: attribute %s refers to a function attribute", label, n.op, ErrUnsupportedOp, a.GetName())
			}
			n.attrs[a.GetName()] = a
		}
		for _, in := range n.inputs {
			if !defined[in] {
				return nil, fmt.Errorf("%w: node %s (%s) reads %q, which no earlier node, input or initializer defines (nodes must be in topological order)", ErrBadModel, label, n.op, in)
			}
			lastUse[in] = i
		}
		for _, out := range n.outputs {
			defined[out] = true
		}
		m.nodes = append(m.nodes, n)
	}
	keep := map[string]bool{}
	for _, vi := range g.GetOutput() {
		info, err := valueInfo(vi)
		if err != nil {
			return nil, fmt.Errorf("graph output: %w", err)
		}
		if !defined[info.Name] {
			return nil, fmt.Errorf("%w: graph output %q is computed by no node", ErrBadModel, info.Name)
		}
		m.outputs = append(m.outputs, info)
		keep[info.Name] = true
	}
	m.release = make([][]string, len(m.nodes))
	for name, i := range lastUse {
		if !keep[name] && m.inits[name] == nil && name != "" {
			m.release[i] = append(m.release[i], name)
		}
	}
	return m, nil
}

func valueInfo(vi *onnxpb.ValueInfoProto) (ValueInfo, error) {
	info := ValueInfo{Name: vi.GetName()}
	tt := vi.GetType().GetTensorType()
	if tt == nil {
		return info, fmt.Errorf("%s: %w: only tensors are supported (not sequences, maps or optionals)", info.Name, ErrUnsupportedType)
	}
	info.DType = DType(tt.GetElemType())
	if !info.DType.supported() {
		return info, fmt.Errorf("%s: %w: %s", info.Name, ErrUnsupportedType, onnxpb.TensorProto_DataType(info.DType))
	}
	if tt.GetShape() == nil {
		info.Shape = nil // rank unknown
		return info, nil
	}
	info.Shape = []int{}
	for _, d := range tt.GetShape().GetDim() {
		if v, ok := d.GetValue().(*onnxpb.TensorShapeProto_Dimension_DimValue); ok && v.DimValue >= 0 {
			info.Shape = append(info.Shape, int(v.DimValue))
		} else {
			info.Shape = append(info.Shape, -1)
		}
		info.DimNames = append(info.DimNames, d.GetDimParam())
	}
	return info, nil
}

// Name is the graph's name.
func (m *Model) Name() string { return m.name }

// Opset is the version of the default operator set the model imports.
func (m *Model) Opset() int64 { return m.opset }

// Inputs describes the inputs Run needs.
func (m *Model) Inputs() []ValueInfo { return m.inputs }

// Outputs describes the outputs Run returns.
func (m *Model) Outputs() []ValueInfo { return m.outputs }

// Operators lists the operators the engine implements, sorted.
func Operators() []string {
	var names []string
	for name := range operators() {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// Run computes the model's outputs. Every input must be given, with the
// declared element type and every fixed dimension as declared.
func (m *Model) Run(inputs map[string]*Tensor) (out map[string]*Tensor, err error) {
	values := make(map[string]*Tensor, len(m.inits)+len(inputs)+len(m.nodes))
	for name, t := range m.inits {
		values[name] = t
	}
	for _, in := range m.inputs {
		t, ok := inputs[in.Name]
		if !ok || t == nil {
			return nil, fmt.Errorf("run: %w: input %q is missing (want %s %s)", ErrBadInput, in.Name, in.DType, shapeString(in.Shape))
		}
		if err := in.check(t); err != nil {
			return nil, fmt.Errorf("run: %w", err)
		}
		values[in.Name] = t
	}
	if len(inputs) > len(m.inputs) {
		for name := range inputs {
			if !m.hasInput(name) {
				return nil, fmt.Errorf("run: %w: the model has no input %q (inputs: %s)", ErrBadInput, name, m.inputNames())
			}
		}
	}
	// An operator that indexes past a slice on input it did not foresee
	// fails this call, not the process serving other requests.
	var cur *node
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("run: node %s (%s): internal error: %v", cur.name, cur.op, r)
		}
	}()
	args := make([]*Tensor, 0, 8)
	for i, n := range m.nodes {
		cur = n
		args = args[:0]
		for _, name := range n.inputs {
			args = append(args, values[name]) // "" (an omitted optional input) is nil
		}
		res, err := runHalf(n, args)
		if err != nil {
			return nil, fmt.Errorf("run: node %s (%s): %w", n.name, n.op, err)
		}
		for j, name := range n.outputs {
			if name == "" {
				continue
			}
			if j >= len(res) || res[j] == nil {
				return nil, fmt.Errorf("run: node %s (%s): %w: output %d (%s) is not produced", n.name, n.op, ErrUnsupportedOp, j, name)
			}
			values[name] = res[j]
		}
		for _, name := range m.release[i] {
			delete(values, name)
		}
	}
	out = make(map[string]*Tensor, len(m.outputs))
	for _, o := range m.outputs {
		out[o.Name] = values[o.Name]
	}
	return out, nil
}

func (m *Model) hasInput(name string) bool {
	for _, in := range m.inputs {
		if in.Name == name {
			return true
		}
	}
	return false
}

func (m *Model) inputNames() string {
	var names []string
	for _, in := range m.inputs {
		names = append(names, in.Name)
	}
	return strings.Join(names, ", ")
}

// check reports whether t fits the declared type and fixed dimensions.
func (v ValueInfo) check(t *Tensor) error {
	if t.dtype != v.DType {
		return fmt.Errorf("%w: input %q is %s, the model wants %s %s", ErrBadInput, v.Name, t.dtype, v.DType, shapeString(v.Shape))
	}
	if v.Shape == nil {
		return nil
	}
	ok := len(t.shape) == len(v.Shape)
	for i := 0; ok && i < len(v.Shape); i++ {
		ok = v.Shape[i] < 0 || v.Shape[i] == t.shape[i]
	}
	if !ok {
		return fmt.Errorf("%w: input %q has shape %v, the model wants %s", ErrBadInput, v.Name, t.shape, shapeString(v.Shape))
	}
	return nil
}

// shapeString writes a declared shape with open dimensions as "?".
func shapeString(shape []int) string {
	if shape == nil {
		return "[any shape]"
	}
	parts := make([]string, len(shape))
	for i, d := range shape {
		if d < 0 {
			parts[i] = "?"
		} else {
			parts[i] = fmt.Sprint(d)
		}
	}
	return "[" + strings.Join(parts, " ") + "]"
}
