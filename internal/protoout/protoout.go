// Package protoout writes API messages as the CLIs print them with
// -o json: protobuf JSON, field names as the API's JSON spells them,
// indented the same way every time, so that drover and drover-agent print
// alike and their output diffs cleanly.
package protoout

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// WriteJSON writes m to w as indented protobuf JSON and a newline.
func WriteJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	// protojson deliberately varies its whitespace between builds so
	// nobody depends on it; re-indenting makes the output stable for
	// diffs and golden files without touching any value.
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return fmt.Errorf("encode JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err = w.Write(buf.Bytes())
	return err
}
