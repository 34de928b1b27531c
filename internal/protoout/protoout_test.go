package protoout

import (
	"bytes"
	"testing"

	droverv1 "github.com/droverhq/drover/proto/drover/v1"
)

// The output is the API's JSON (lowerCamelCase names, 64-bit integers as
// strings), indented by two spaces, with a final newline.
func TestWriteJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteJSON(&buf, &droverv1.GPUInfo{Name: "H100", MemoryTotalBytes: 80 << 30}); err != nil {
		t.Fatal(err)
	}
	want := "{\n  \"name\": \"H100\",\n  \"memoryTotalBytes\": \"85899345920\"\n}\n"
	if got := buf.String(); got != want {
		t.Errorf("WriteJSON =\n%s\nwant\n%s", got, want)
	}
}
