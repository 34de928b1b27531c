package units

import "testing"

func TestBytes(t *testing.T) {
	for _, tt := range []struct {
		in   uint64
		want string
	}{
		{0, "0 B"},
		{1023, "1023 B"},
		{1024, "1.0 KiB"},
		{1536, "1.5 KiB"},
		{4 << 20, "4.0 MiB"},
		{80 << 30, "80.0 GiB"},
		{2 << 40, "2.0 TiB"},
		{3 << 50, "3.0 PiB"},
		{1 << 63, "8.0 EiB"},
	} {
		if got := Bytes(tt.in); got != tt.want {
			t.Errorf("Bytes(%d) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
