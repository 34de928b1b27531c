package sketch

import (
	"fmt"
	"math"
	"strings"
	"testing"
)

func TestReferenceFromCSVSketchesEachColumnByItsKind(t *testing.T) {
	var b strings.Builder
	b.WriteString("age, colour ,input[0],out:label,out:p.argmax\n")
	for i := range 1000 {
		colour := []string{"red", "green", "blue"}[i%3]
		age := fmt.Sprint(20 + i%50)
		if i%10 == 0 {
			age = "" // missing
		}
		fmt.Fprintf(&b, "%s,%s,%g,%d,%d\n", age, colour, float64(i)/1000, i%2, i%10)
	}
	p, st, err := ReferenceFromCSV(strings.NewReader(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	if st != (ReferenceStats{Rows: 1000, Inputs: 3, Outputs: 2}) || p.Requests != 1000 {
		t.Fatalf("stats %+v, requests %d", st, p.Requests)
	}
	age := p.Input("age")
	if age == nil || age.Kind != KindNumeric || age.Missing != 100 || age.Numeric.Count() != 900 {
		t.Fatalf("age: %+v", age)
	}
	colour := p.Input("colour")
	if colour == nil || colour.Kind != KindCategorical || colour.Categorical.Count("green") != 333 {
		t.Fatalf("colour: %+v", colour)
	}
	x := p.Input("input[0]")
	med, err := x.Numeric.Quantile(0.5)
	if err != nil || math.Abs(med-0.5) > 0.01 {
		t.Fatalf("median of input[0] = %v, %v; want 0.5 within 1%%", med, err)
	}
	if len(p.Outputs) != 2 || p.Outputs[0].Name != "label" || p.Outputs[0].Kind != KindNumeric {
		t.Fatalf("outputs: %+v", p.Outputs)
	}
	// Class indexes are numbers, but the agent observes an argmax as a
	// category: the column is categorical so that the two compare.
	if am := p.Outputs[1]; am.Name != "p.argmax" || am.Kind != KindCategorical || am.Categorical.Count("7") != 100 {
		t.Fatalf("argmax output: %+v", am)
	}
	// The profile must travel: its wire form passes the checks servers
	// apply to agents' windows.
	if _, err := ProfileFromProto(p.ToProto()); err != nil {
		t.Fatalf("wire form refused: %v", err)
	}
}

func TestReferenceFromCSVNamesWhatIsWrong(t *testing.T) {
	for _, tc := range []struct{ name, csv, want string }{
		{"empty", "", "the file is empty"},
		{"header only", "a,b\n", "no rows"},
		{"unnamed column", "a,,b\n1,2,3\n", "column 2 has no name"},
		{"duplicate", "a,a\n1,2\n", `"a" appears twice`},
		{"ragged row", "a,b\n1,2\n3\n", "line 3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ReferenceFromCSV(strings.NewReader(tc.csv))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to say %q", err, tc.want)
			}
		})
	}
}
