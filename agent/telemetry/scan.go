package telemetry

import (
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
	"unsafe"

	"github.com/droverhq/drover/internal/sketch"
)

// scanBody observes the features of a body of the form
// {"inputs": {NAME: value, …}, …} (field "inputs" or "outputs") by walking
// its bytes: no value is built, numbers are parsed where they lie, and
// only new names and categorical values are copied. It reports whether
// the body is JSON with that field holding an object.
//
// A number or a string (a bool is a category) is the feature NAME; an
// array is rows: an array of arrays is a batch whose rows are each
// observed, a flat array one row. A row's elements are NAME[0], NAME[1]…
// up to maxElems (flattened in order when a row is itself nested), and
// for an output a numeric row of two or more also gives NAME.argmax, the
// index of its largest element, as a category. Objects and nulls are no
// features. A name given twice is observed twice.
func scanBody(body []byte, field string, fs *features, req uint64, outputs bool, maxElems, maxFeatures int) bool {
	// Checked whole first, so the walk below may assume well-formed
	// JSON and observes nothing from a body that is not.
	if !json.Valid(body) {
		return false
	}
	s := scanner{b: body}
	s.ws()
	if s.peek() != '{' {
		return false
	}
	found := false
	s.i++
	for {
		s.ws()
		if s.peek() == '}' {
			return found
		}
		if s.peek() == ',' {
			s.i++
			s.ws()
		}
		key := s.str()
		s.ws()
		s.i++ // ':'
		s.ws()
		if key != field || s.peek() != '{' || found {
			s.skip()
			continue
		}
		found = true
		s.features(fs, req, outputs, maxElems, maxFeatures)
	}
}

// scanner walks well-formed JSON.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// str reads a string at s.i. Without escapes the result aliases the body:
// callers copy it before keeping it.
func (s *scanner) str() string {
	start := s.i + 1
	escaped := false
	s.i++
	for s.b[s.i] != '"' {
		if s.b[s.i] == '\\' {
			escaped = true
			s.i++
		}
		s.i++
	}
	raw := s.b[start:s.i]
	s.i++
	if !escaped && utf8.Valid(raw) {
		return unsafeString(raw)
	}
	// Escapes, or bytes that are not UTF-8 (which protobuf strings may
	// not hold): decoded as encoding/json does, each bad byte U+FFFD.
	var out string
	_ = json.Unmarshal(s.b[start-1:s.i], &out) // valid: checked whole
	return out
}

func unsafeString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// num reads a number at s.i.
func (s *scanner) num() float64 {
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c >= '0' && c <= '9', c == '-', c == '+', c == '.', c == 'e', c == 'E':
			s.i++
			continue
		}
		break
	}
	f, err := strconv.ParseFloat(unsafeString(s.b[start:s.i]), 64)
	if err != nil {
		// Out of float64's range: not finite, so out of schema.
		return f
	}
	return f
}

// skip passes the value at s.i.
func (s *scanner) skip() {
	depth := 0
	for {
		switch s.peek() {
		case '"':
			s.str()
		case '{', '[':
			depth++
			s.i++
		case '}', ']':
			depth--
			s.i++
		case 0:
			return
		default:
			if depth == 0 {
				// A number or literal at the top: up to its end.
				for s.i < len(s.b) && !strings.ContainsRune(",}] \t\n\r", rune(s.b[s.i])) {
					s.i++
				}
				return
			}
			s.i++
		}
		if depth == 0 {
			return
		}
	}
}

// scalar reads a number, string or literal at s.i; ok is false for null.
func (s *scanner) scalar() (v sketch.Value, kind sketch.Kind, num float64, ok bool) {
	switch c := s.peek(); c {
	case '"':
		// Copied: a categorical sketch keeps the values it counts.
		return sketch.Category(strings.Clone(s.str())), sketch.KindCategorical, 0, true
	case 't':
		s.i += 4
		return sketch.Category("true"), sketch.KindCategorical, 0, true
	case 'f':
		s.i += 5
		return sketch.Category("false"), sketch.KindCategorical, 0, true
	case 'n':
		s.i += 4
		return sketch.Value{}, 0, 0, false
	}
	f := s.num()
	return sketch.Number(f), sketch.KindNumeric, f, true
}

// features reads the object of named values at s.i.
func (s *scanner) features(fs *features, req uint64, outputs bool, maxElems, maxFeatures int) {
	s.i++ // '{'
	for s.next('}') {
		name := s.str()
		s.ws()
		s.i++ // ':'
		s.ws()
		switch s.peek() {
		case '{':
			s.skip()
		case '[':
			s.array(fs, name, req, outputs, maxElems, maxFeatures)
		default:
			if v, kind, _, ok := s.scalar(); ok {
				fs.observe(name, v, kind, req, maxFeatures)
			}
		}
	}
}

// next moves s to the next member or element of the object or array it
// is in, past a comma, and reports whether there is one; at the closing
// bracket it steps past it and reports false. The scanner only runs on
// bodies json.Valid accepted, so nothing else can come.
func (s *scanner) next(closing byte) bool {
	s.ws()
	switch s.peek() {
	case closing:
		s.i++
		return false
	case ',':
		s.i++
		s.ws()
	}
	return true
}

// array reads an array value: a batch of rows when its first element is
// an array, else one row.
func (s *scanner) array(fs *features, name string, req uint64, outputs bool, maxElems, maxFeatures int) {
	save := s.i
	s.i++
	s.ws()
	if s.peek() != '[' {
		s.i = save
		s.row(fs, name, req, outputs, maxElems, maxFeatures)
		return
	}
	for s.next(']') {
		if s.peek() == '[' {
			s.row(fs, name, req, outputs, maxElems, maxFeatures)
		} else {
			s.skip()
		}
	}
}

// row observes the array at s.i as one row: its scalars depth first as
// name[0], name[1]… up to maxElems, and for an output of two or more
// numbers the argmax.
func (s *scanner) row(fs *features, name string, req uint64, outputs bool, maxElems, maxFeatures int) {
	r := rowState{best: 0, bestAt: -1, numeric: outputs}
	s.rowElems(fs, name, req, &r, maxElems, maxFeatures)
	if r.numeric && r.n >= 2 && r.bestAt >= 0 {
		fs.observe(fs.argmaxName(name, maxFeatures), sketch.Category(strconv.Itoa(r.bestAt)), sketch.KindCategorical, req, maxFeatures)
	}
}

type rowState struct {
	n       int // elements taken
	best    float64
	bestAt  int
	numeric bool
}

func (s *scanner) rowElems(fs *features, name string, req uint64, r *rowState, maxElems, maxFeatures int) {
	s.i++ // '['
	for s.next(']') {
		switch c := s.peek(); {
		case r.n >= maxElems:
			s.skip()
		case c == '[':
			s.rowElems(fs, name, req, r, maxElems, maxFeatures)
		case c == '{':
			// An element that is no feature still takes its place.
			s.skip()
			r.n++
			r.numeric = false
		default:
			v, kind, f, ok := s.scalar()
			if !ok {
				r.n++
				r.numeric = false
				continue
			}
			i := r.n
			r.n++
			fs.observe(fs.elemName(name, i, maxFeatures), v, kind, req, maxFeatures)
			if kind != sketch.KindNumeric {
				r.numeric = false
			} else if r.bestAt < 0 || f > r.best {
				r.best, r.bestAt = f, i
			}
		}
	}
}
