package telemetry

import (
	"bytes"
	"encoding/json"
	"io"
	"math"
	"strconv"
	"testing"

	"github.com/droverhq/drover/internal/sketch"
)

// The reference the scanner is held to: the same reading of a body done
// with encoding/json's generic values, simple and slow.

func referenceParse(body []byte, field string, fs *features, req uint64, outputs bool, maxElems, maxFeatures int) bool {
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		return false
	}
	vals, ok := doc[field].(map[string]any)
	if !ok {
		return false
	}
	for name, v := range vals {
		observeValue(fs, name, v, req, outputs, maxElems, maxFeatures)
	}
	return true
}

// observeValue observes one named value: a number or a string (a bool is
// a category) as the feature name; an array as rows: an array of arrays
// is a batch whose rows are each observed, a flat array one row. A row's
// elements are name[0], name[1]… up to maxElems (flattened in order when
// a row is itself nested), and for an output a numeric row of two or more
// also gives name.argmax, the index of its largest element, as a
// category.
func observeValue(fs *features, name string, v any, req uint64, outputs bool, maxElems, maxFeatures int) {
	if s, kind, ok := scalar(v); ok {
		fs.observe(name, s, kind, req, maxFeatures)
		return
	}
	arr, ok := v.([]any)
	if !ok {
		return // objects and nulls are not features
	}
	rows := [][]any{arr}
	if len(arr) > 0 {
		if _, nested := arr[0].([]any); nested {
			rows = rows[:0]
			for _, r := range arr {
				if ra, ok := r.([]any); ok {
					rows = append(rows, ra)
				}
			}
		}
	}
	var flat []any
	for _, row := range rows {
		flat = flatten(flat[:0], row, maxElems)
		best, bestAt, numeric := 0.0, -1, outputs && len(flat) >= 2
		for i, x := range flat {
			s, kind, ok := scalar(x)
			if !ok {
				numeric = false
				continue
			}
			fs.observe(fs.elemName(name, i, maxFeatures), s, kind, req, maxFeatures)
			if f, isNum := x.(float64); isNum && numeric && (bestAt < 0 || f > best) {
				best, bestAt = f, i
			} else if !isNum {
				numeric = false
			}
		}
		if numeric && bestAt >= 0 {
			fs.observe(name+".argmax", sketch.Category(strconv.Itoa(bestAt)), sketch.KindCategorical, req, maxFeatures)
		}
	}
}

// flatten appends row's scalars, depth first, up to max of them.
func flatten(dst []any, row []any, max int) []any {
	for _, x := range row {
		if len(dst) >= max {
			return dst
		}
		if a, ok := x.([]any); ok {
			dst = flatten(dst, a, max)
			continue
		}
		dst = append(dst, x)
	}
	return dst
}

func scalar(v any) (sketch.Value, sketch.Kind, bool) {
	switch x := v.(type) {
	case float64:
		return sketch.Number(x), sketch.KindNumeric, true
	case string:
		return sketch.Category(x), sketch.KindCategorical, true
	case bool:
		return sketch.Category(strconv.FormatBool(x)), sketch.KindCategorical, true
	}
	return sketch.Value{}, 0, false
}

// dupFree reports whether no object in body has a key twice (the
// reference keeps the last value, the scanner observes both).
func dupFree(body []byte) bool {
	dec := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		obj  bool
		keys map[string]bool
		key  bool // next string token is a key
	}
	var stack []*frame
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
		top := func() *frame {
			if len(stack) == 0 {
				return nil
			}
			return stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{':
				if f := top(); f != nil && f.obj {
					f.key = true
				}
				stack = append(stack, &frame{obj: true, keys: map[string]bool{}, key: true})
			case '[':
				if f := top(); f != nil && f.obj {
					f.key = true
				}
				stack = append(stack, &frame{})
			default:
				stack = stack[:len(stack)-1]
			}
		default:
			f := top()
			if f != nil && f.obj && f.key {
				s := t.(string)
				if f.keys[s] {
					return false
				}
				f.keys[s] = true
				f.key = false
				continue
			}
			if f != nil && f.obj {
				f.key = true
			}
		}
	}
}

// profileOf returns what fs holds, in comparable form.
func profileOf(fs *features) []byte {
	p := &sketch.Profile{Requests: 1, Inputs: fs.profiles(1), Errors: map[string]uint64{}, Latency: sketch.NewNumeric()}
	b, _ := json.Marshal(p.ToProto())
	return b
}

func FuzzScanBody(f *testing.F) {
	for _, s := range []string{
		`{"inputs": {"pixels": [[1, 2, 3, 99], [4, 5, 6, 99]], "camera": "north", "gain": 1.5}}`,
		`{"outputs": {"probs": [[0.1, 0.7, 0.2], [0.6, 0.3, 0.1]]}, "model": "digits", "latency_ms": 1.2}`,
		`{"inputs": {"a": [1, "x", null, {"b": 2}, [3, [4]]], "t": true, "n": null, "o": {"x": 1}}}`,
		`{"outputs": {"v": [[1e3, -2], [], [null, 1]], "s": ["a", "b"]}}`,
		`{"inputs": {"k\u00e9y": "v\n", "x": -0.5e-3}, "extra": [1, {"a": "}"}]}`,
		`{"inputs": [1, 2]}`, `[]`, `{"inputs": {}}`, `not json`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, field := range []string{"inputs", "outputs"} {
			outputs := field == "outputs"
			got := features{byName: map[string]*feature{}}
			ok := scanBody(body, field, &got, 1, outputs, 4, math.MaxInt)
			want := features{byName: map[string]*feature{}}
			refOK := referenceParse(body, field, &want, 1, outputs, 4, math.MaxInt)
			if !json.Valid(body) || !dupFree(body) || ok != refOK {
				// Bodies the reference cannot read (a number past
				// float64, say) or reads differently by design.
				if !ok && len(got.byName) != 0 {
					t.Fatalf("scan refused the body but observed %d features", len(got.byName))
				}
				continue
			}
			if g, w := profileOf(&got), profileOf(&want); !bytes.Equal(g, w) {
				t.Fatalf("%s of %q:\nscan      %s\nreference %s", field, body, g, w)
			}
		}
	})
}
