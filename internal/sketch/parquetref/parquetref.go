// Package parquetref builds a model version's reference profile from a data
// set in Parquet, as sketch.ReferenceFromCSV does from CSV. It is a package
// of its own so that the agent, which links internal/sketch, does not link
// a Parquet reader.
package parquetref

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/parquet-go/parquet-go"
	"github.com/parquet-go/parquet-go/format"

	"github.com/droverhq/drover/internal/sketch"
)

// Magic starts (and ends) every Parquet file.
var Magic = []byte("PAR1")

// IsParquet reports whether head, the first bytes of a file, are those of
// a Parquet file.
func IsParquet(head []byte) bool { return bytes.HasPrefix(head, Magic) }

// Read builds the reference profile of the Parquet file r of size bytes.
//
// Each leaf column is one feature, named by its path (fields of a group
// joined with "."), with the same conventions as a CSV header: "out:NAME"
// for an output, and a name ending in sketch.ArgmaxSuffix is categorical.
// Numbers (integers, floats, doubles) are numeric features; strings, byte
// arrays and booleans categorical; a null is missing. Repeated columns
// (lists) and types whose values are not plain numbers (INT96, DECIMAL)
// are refused with the column named, since the agent could not observe
// them under that name either.
func Read(r io.ReaderAt, size int64) (*sketch.Profile, sketch.ReferenceStats, error) {
	f, err := parquet.OpenFile(r, size, parquet.SkipPageIndex(true), parquet.SkipBloomFilters(true))
	if err != nil {
		return nil, sketch.ReferenceStats{}, fmt.Errorf("reference: not a readable Parquet file: %w", err)
	}
	if n := f.NumRows(); n > sketch.MaxReferenceRows {
		return nil, sketch.ReferenceStats{}, fmt.Errorf("reference: %d rows, more than %d; sample the data set down to at most that many", n, sketch.MaxReferenceRows)
	}
	leaves, err := columns(f.Root())
	if err != nil {
		return nil, sketch.ReferenceStats{}, err
	}
	names := make([]string, len(leaves))
	for i, c := range leaves {
		names[i] = c.name
	}
	b, err := sketch.NewReferenceBuilder(names)
	if err != nil {
		return nil, sketch.ReferenceStats{}, err
	}
	for _, rg := range f.RowGroups() {
		chunks := rg.ColumnChunks()
		for i, c := range leaves {
			if err := readChunk(b, i, c, chunks[c.index]); err != nil {
				return nil, sketch.ReferenceStats{}, err
			}
		}
	}
	return b.Profile(int(f.NumRows()))
}

// column is a leaf column of the file's schema.
type column struct {
	name   string
	index  int // among the file's leaf columns: its chunk in a row group
	kind   parquet.Kind
	maxDef int
}

// columns lists the leaf columns under c in schema order, refusing those
// a reference cannot hold.
func columns(c *parquet.Column) ([]column, error) {
	var out []column
	for _, ch := range c.Columns() {
		name := strings.Join(ch.Path(), ".")
		if lt := ch.Type().LogicalType(); lt != nil {
			switch lt.Value.(type) {
			case *format.ListType, *format.MapType:
				return nil, fmt.Errorf("reference: column %q is a %s; write one column per element, named as the agent observes them (%s[0], %s[1], ...)", name, lt, name, name)
			}
		}
		if ch.MaxRepetitionLevel() > 0 {
			return nil, fmt.Errorf("reference: column %q is repeated (a list); write one column per element, named as the agent observes them (%s[0], %s[1], ...)", name, name, name)
		}
		if !ch.Leaf() {
			sub, err := columns(ch)
			if err != nil {
				return nil, err
			}
			out = append(out, sub...)
			continue
		}
		t := ch.Type()
		if lt := t.LogicalType(); lt != nil {
			if _, ok := lt.Value.(*format.DecimalType); ok {
				return nil, fmt.Errorf("reference: column %q is DECIMAL; cast it to DOUBLE", name)
			}
		}
		switch t.Kind() {
		case parquet.Int96:
			return nil, fmt.Errorf("reference: column %q is INT96 (a legacy timestamp); drop it or cast it to a number", name)
		case parquet.Boolean, parquet.Int32, parquet.Int64, parquet.Float, parquet.Double, parquet.ByteArray, parquet.FixedLenByteArray:
		default:
			return nil, fmt.Errorf("reference: column %q has type %v, which a reference cannot hold", name, t)
		}
		out = append(out, column{name: name, index: ch.Index(), kind: t.Kind(), maxDef: ch.MaxDefinitionLevel()})
	}
	return out, nil
}

// readChunk adds every value of one column chunk to column i of b.
func readChunk(b *sketch.ReferenceBuilder, i int, c column, chunk parquet.ColumnChunk) error {
	pages := chunk.Pages()
	defer pages.Close()
	vals := make([]parquet.Value, 1024)
	for {
		page, err := pages.ReadPage()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reference: column %q: %w", c.name, err)
		}
		err = readPage(b, i, c, page, vals)
		parquet.Release(page)
		if err != nil {
			return err
		}
	}
}

func readPage(b *sketch.ReferenceBuilder, i int, c column, page parquet.Page, vals []parquet.Value) error {
	r := page.Values()
	for {
		n, err := r.ReadValues(vals)
		for _, v := range vals[:n] {
			observe(b, i, c, v)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("reference: column %q: %w", c.name, err)
		}
	}
}

func observe(b *sketch.ReferenceBuilder, i int, c column, v parquet.Value) {
	if v.IsNull() || v.DefinitionLevel() < c.maxDef {
		b.ObserveMissing(i)
		return
	}
	switch c.kind {
	case parquet.Boolean:
		b.ObserveCategory(i, strconv.FormatBool(v.Boolean()))
	case parquet.Int32:
		b.ObserveNumber(i, float64(v.Int32()))
	case parquet.Int64:
		b.ObserveNumber(i, float64(v.Int64()))
	case parquet.Float:
		b.ObserveNumber(i, float64(v.Float()))
	case parquet.Double:
		b.ObserveNumber(i, v.Double())
	default: // ByteArray, FixedLenByteArray
		b.ObserveCategory(i, string(v.ByteArray()))
	}
}
