package parquetref

import (
	"bytes"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/parquet-go/parquet-go"
	"google.golang.org/protobuf/proto"

	"github.com/droverhq/drover/internal/sketch"
)

type geo struct {
	Lat float64 `parquet:"lat"`
}

type row struct {
	Age    *int32  `parquet:"age,optional"`
	Colour string  `parquet:"colour"`
	X      float64 `parquet:"input[0]"`
	Member bool    `parquet:"member"`
	Geo    geo     `parquet:"geo"`
	Label  int64   `parquet:"out:label"`
	Class  int32   `parquet:"out:p.argmax"`
}

func writeParquet(t *testing.T, rows any) []byte {
	t.Helper()
	var buf bytes.Buffer
	var err error
	switch rs := rows.(type) {
	case []row:
		// Small row groups and pages, so that reading crosses both.
		err = parquet.Write(&buf, rs, parquet.PageBufferSize(512), parquet.MaxRowsPerRowGroup(300))
	case []struct {
		Values []float64 `parquet:"values,list"`
	}:
		err = parquet.Write(&buf, rs)
	case []struct {
		A float64 `parquet:"a"`
	}:
		err = parquet.Write(&buf, rs)
	default:
		t.Fatalf("no writer for %T", rows)
	}
	if err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// The same data set gives the same profile, bit for bit, in Parquet as in
// CSV: a reference does not depend on the format it came in.
func TestParquetProfileEqualsCSVProfile(t *testing.T) {
	var rows []row
	var csv strings.Builder
	csv.WriteString("age,colour,input[0],member,geo.lat,out:label,out:p.argmax\n")
	for i := range 1000 {
		r := row{
			Colour: []string{"red", "green", "blue"}[i%3],
			X:      float64(i) / 1000,
			Member: i%4 == 0,
			Geo:    geo{Lat: 40 + float64(i%90)/10},
			Label:  int64(i % 2),
			Class:  int32(i % 10),
		}
		age := ""
		if i%10 != 0 {
			a := int32(20 + i%50)
			r.Age = &a
			age = fmt.Sprint(a)
		}
		rows = append(rows, r)
		fmt.Fprintf(&csv, "%s,%s,%v,%v,%v,%d,%d\n", age, r.Colour, r.X, r.Member, r.Geo.Lat, r.Label, r.Class)
	}
	file := writeParquet(t, rows)
	if !IsParquet(file) {
		t.Fatal("IsParquet refuses a Parquet file")
	}
	got, st, err := Read(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	if st != (sketch.ReferenceStats{Rows: 1000, Inputs: 5, Outputs: 2}) {
		t.Fatalf("stats %+v", st)
	}
	want, _, err := sketch.ReferenceFromCSV(strings.NewReader(csv.String()))
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got.ToProto(), want.ToProto()) {
		t.Fatalf("Parquet profile\n%v\ndiffers from the CSV one\n%v", got.ToProto(), want.ToProto())
	}
	if age := got.Input("age"); age.Kind != sketch.KindNumeric || age.Missing != 100 {
		t.Fatalf("age: %+v", age)
	}
	if m := got.Input("member"); m.Kind != sketch.KindCategorical || m.Categorical.Count("true") != 250 {
		t.Fatalf("member: %+v", m)
	}
	if am := got.Outputs[1]; am.Name != "p.argmax" || am.Kind != sketch.KindCategorical || am.Categorical.Count("7") != 100 {
		t.Fatalf("argmax output: %+v", am)
	}
	if _, err := sketch.ProfileFromProto(got.ToProto()); err != nil {
		t.Fatalf("wire form refused: %v", err)
	}
}

// NaN and ±Inf in a numeric column are counted out of schema, as the agent
// counts them, and the column stays numeric.
func TestParquetCountsNonFiniteOutOfSchema(t *testing.T) {
	rows := []struct {
		A float64 `parquet:"a"`
	}{{1}, {math.NaN()}, {2}, {math.Inf(1)}, {3}}
	file := writeParquet(t, rows)
	p, _, err := Read(bytes.NewReader(file), int64(len(file)))
	if err != nil {
		t.Fatal(err)
	}
	a := p.Input("a")
	if a.Kind != sketch.KindNumeric || a.OutOfSchema != 2 || a.Numeric.Count() != 3 {
		t.Fatalf("a: kind %v, out of schema %d, count %v; want numeric, 2, 3", a.Kind, a.OutOfSchema, a.Numeric.Count())
	}
}

func TestParquetNamesWhatIsWrong(t *testing.T) {
	lists := writeParquet(t, []struct {
		Values []float64 `parquet:"values,list"`
	}{{Values: []float64{1, 2}}})
	empty := writeParquet(t, []struct {
		A float64 `parquet:"a"`
	}{})
	for _, tc := range []struct {
		name string
		file []byte
		want string
	}{
		{"list", lists, `column "values" is a LIST`},
		{"no rows", empty, "no rows"},
		{"csv", []byte("a,b\n1,2\n"), "not a readable Parquet file"},
		{"truncated", lists[:len(lists)-10], "not a readable Parquet file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Read(bytes.NewReader(tc.file), int64(len(tc.file)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}
