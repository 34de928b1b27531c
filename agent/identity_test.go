package agent

import (
	"encoding/json"
	"encoding/pem"
	"testing"
)

// replaceJSONField returns the identity file data with one string field
// set to value.
func replaceJSONField(t *testing.T, data []byte, field, value string) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	m[field] = value
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
