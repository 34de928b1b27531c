package sketch

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// OutputPrefix marks a reference data set's column as a model output
// rather than an input: "out:label" is the output named "label".
const OutputPrefix = "out:"

// ArgmaxSuffix ends the name of the feature the agent derives from an
// output vector: the index of its largest element, a categorical value.
const ArgmaxSuffix = ".argmax"

// MaxReferenceRows bounds the rows ReferenceFromCSV reads: a reference is a
// sample, and sketches of a million rows are as precise as they get.
const MaxReferenceRows = 10_000_000

// MaxReferenceBytes bounds a version's reference profile, encoded: about
// 500 features at the sketches' usual size. It travels in the Raft log.
const MaxReferenceBytes = 1 << 20

// ReferenceStats tells what a reference data set held.
type ReferenceStats struct {
	Rows    int
	Inputs  int
	Outputs int
}

// ReferenceFromCSV builds a model version's reference profile from a data
// set in CSV with a header row. Each column is one feature, named by its
// header as the agent names what it observes ("input[3]", "age",
// "out:probabilities.argmax" for an output). A column whose every
// non-empty cell is a finite number is numeric, any other categorical,
// except that a name ending in ArgmaxSuffix is always categorical: the
// agent observes an output vector's argmax as a category (the class), so
// a column of class labels must be one too. An empty cell counts as
// missing.
//
// It reads the data once: a column is sketched both ways until its kind is
// known at the end, so the file may be a pipe and its size is bounded only
// by MaxReferenceRows.
func ReferenceFromCSV(r io.Reader) (*Profile, ReferenceStats, error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	header, err := cr.Read()
	if errors.Is(err, io.EOF) {
		return nil, ReferenceStats{}, errors.New("reference: the file is empty; want a header row naming the features, then one row per example")
	}
	if err != nil {
		return nil, ReferenceStats{}, fmt.Errorf("reference: header: %w", err)
	}
	b, err := NewReferenceBuilder(header)
	if err != nil {
		return nil, ReferenceStats{}, err
	}
	rows := 0
	for {
		rec, err := cr.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// csv.ParseError names the line and column.
			return nil, ReferenceStats{}, fmt.Errorf("reference: %w", err)
		}
		if rows++; rows > MaxReferenceRows {
			return nil, ReferenceStats{}, fmt.Errorf("reference: more than %d rows; sample the data set down to at most that many", MaxReferenceRows)
		}
		for i, cell := range rec {
			b.ObserveText(i, cell)
		}
	}
	if rows == 0 {
		return nil, ReferenceStats{}, errors.New("reference: the file has a header but no rows")
	}
	return b.Profile(rows)
}

// ReferenceBuilder sketches a reference data set column by column, for
// readers of formats other than CSV. Its columns are named as
// ReferenceFromCSV's header cells are, and follow the same rules.
type ReferenceBuilder struct {
	cols []*referenceColumn
}

// NewReferenceBuilder returns a builder for columns named by names, in
// that order; it refuses names a profile cannot carry.
func NewReferenceBuilder(names []string) (*ReferenceBuilder, error) {
	var in, out []Field
	cols := make([]*referenceColumn, len(names))
	for i, h := range names {
		h = strings.TrimSpace(h)
		c := &referenceColumn{name: h, numeric: NewNumeric(), categorical: NewCategorical(DefaultCapacity)}
		if name, ok := strings.CutPrefix(h, OutputPrefix); ok {
			c.name, c.output = name, true
			out = append(out, Field{Name: name, Kind: KindNumeric})
		} else {
			in = append(in, Field{Name: h, Kind: KindNumeric})
		}
		if c.name == "" {
			return nil, fmt.Errorf("reference: column %d has no name; every header cell names a feature", i+1)
		}
		c.text = strings.HasSuffix(c.name, ArgmaxSuffix)
		cols[i] = c
	}
	// NewSchema checks what a profile needs of names: unique, bounded
	// in length and in number.
	if _, err := NewSchema(in, out); err != nil {
		return nil, fmt.Errorf("reference: header: %w", err)
	}
	return &ReferenceBuilder{cols: cols}, nil
}

// ObserveText adds a cell of text to column i, as CSV has them: empty is
// missing, and the column stays numeric while every cell is a finite
// number.
func (b *ReferenceBuilder) ObserveText(i int, cell string) { b.cols[i].observe(cell) }

// ObserveNumber adds a value of a numeric column. NaN and ±Inf count as
// out of schema, as the agent counts them. A column named for an argmax
// (ArgmaxSuffix) takes the number's text as a category instead.
func (b *ReferenceBuilder) ObserveNumber(i int, x float64) {
	c := b.cols[i]
	if c.text {
		c.categorical.Add(strconv.FormatFloat(x, 'f', -1, 64))
		return
	}
	if math.IsNaN(x) || math.IsInf(x, 0) || c.numeric.Add(x) != nil {
		c.outOfSchema++
	}
}

// ObserveCategory adds a value of a column that holds categories (text,
// booleans), which makes the column categorical. A reader gives a column
// either numbers or categories, never both: numbers observed before the
// first category would be lost.
func (b *ReferenceBuilder) ObserveCategory(i int, v string) {
	c := b.cols[i]
	c.text = true
	c.categorical.Add(v)
}

// ObserveMissing counts a missing value (a null) in column i.
func (b *ReferenceBuilder) ObserveMissing(i int) { b.cols[i].missing++ }

// Profile returns the profile of rows rows observed so far.
func (b *ReferenceBuilder) Profile(rows int) (*Profile, ReferenceStats, error) {
	if rows == 0 {
		return nil, ReferenceStats{}, errors.New("reference: the data set has no rows")
	}
	p := &Profile{Errors: map[string]uint64{}, Latency: NewNumeric(), Requests: uint64(rows)}
	st := ReferenceStats{Rows: rows}
	for _, c := range b.cols {
		fp := c.profile()
		if c.output {
			p.Outputs = append(p.Outputs, fp)
			st.Outputs++
		} else {
			p.Inputs = append(p.Inputs, fp)
			st.Inputs++
		}
	}
	sortFeatures(p.Inputs)
	sortFeatures(p.Outputs)
	return p, st, nil
}

// referenceColumn sketches one column both ways until its kind is known.
type referenceColumn struct {
	name        string
	output      bool
	numeric     *Numeric
	categorical *Categorical
	missing     uint64
	outOfSchema uint64
	// text is set once a non-empty cell is not a finite number.
	text bool
}

func (c *referenceColumn) observe(cell string) {
	cell = strings.TrimSpace(cell)
	if cell == "" {
		c.missing++
		return
	}
	c.categorical.Add(cell)
	if c.text {
		return
	}
	x, err := strconv.ParseFloat(cell, 64)
	if err != nil || math.IsNaN(x) || math.IsInf(x, 0) || c.numeric.Add(x) != nil {
		c.text = true
	}
}

func (c *referenceColumn) profile() *FeatureProfile {
	fp := &FeatureProfile{Name: c.name, Missing: c.missing, OutOfSchema: c.outOfSchema}
	if c.text {
		fp.Kind, fp.Categorical = KindCategorical, c.categorical
	} else {
		fp.Kind, fp.Numeric = KindNumeric, c.numeric
	}
	return fp
}
