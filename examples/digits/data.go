package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

// debianDigits is where Debian's python3-sklearn package puts the data set.
const debianDigits = "/usr/lib/python3/dist-packages/sklearn/datasets/data/digits.csv.gz"

const (
	numFeatures = 64 // an 8x8 image, row by row
	numClasses  = 10
	maxPixel    = 16 // each feature counts the set pixels of a 4x4 block
)

// dataset is a set of labelled images: x[i] holds numFeatures pixel counts
// (0..maxPixel) and y[i] its digit.
type dataset struct {
	x [][]float64
	y []int
}

func (d dataset) len() int { return len(d.y) }

// loadDigits reads scikit-learn's digits.csv.gz (or the same rows
// uncompressed): one image a line, 64 pixel counts then the label.
func loadDigits(path string) (dataset, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return dataset{}, fmt.Errorf("digits data set not found at %s: Debian's python3-sklearn package ships it at %s (apt-get install python3-sklearn), or pass -data PATH", path, debianDigits)
	}
	if err != nil {
		return dataset{}, fmt.Errorf("read digits data set: %w", err)
	}
	var r io.Reader = bytes.NewReader(b)
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(r)
		if err != nil {
			return dataset{}, fmt.Errorf("read %s: %w", path, err)
		}
		r = zr
	}
	d, err := parseDigits(r)
	if err != nil {
		return dataset{}, fmt.Errorf("read %s: %w", path, err)
	}
	return d, nil
}

func parseDigits(r io.Reader) (dataset, error) {
	var d dataset
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" {
			continue
		}
		fields := strings.Split(text, ",")
		if len(fields) != numFeatures+1 {
			return dataset{}, fmt.Errorf("line %d: %d fields, want %d pixels and a label", line, len(fields), numFeatures+1)
		}
		x := make([]float64, numFeatures)
		for i, f := range fields[:numFeatures] {
			v, err := strconv.ParseFloat(f, 64)
			if err != nil || v < 0 || v > maxPixel {
				return dataset{}, fmt.Errorf("line %d: pixel %d is %q, want 0..%d", line, i, f, maxPixel)
			}
			x[i] = v
		}
		label, err := strconv.ParseFloat(fields[numFeatures], 64)
		if err != nil || label != float64(int(label)) || label < 0 || label >= numClasses {
			return dataset{}, fmt.Errorf("line %d: label %q is not a digit", line, fields[numFeatures])
		}
		d.x = append(d.x, x)
		d.y = append(d.y, int(label))
	}
	if err := sc.Err(); err != nil {
		return dataset{}, err
	}
	if d.len() == 0 {
		return dataset{}, errors.New("no images")
	}
	return d, nil
}

// split shuffles d with seed and cuts it into a training set and a test
// set holding testFraction of the images.
func split(d dataset, testFraction float64, seed uint64) (train, test dataset) {
	idx := rand.New(rand.NewPCG(seed, 0)).Perm(d.len())
	nTest := int(float64(d.len()) * testFraction)
	for k, i := range idx {
		part := &train
		if k < nTest {
			part = &test
		}
		part.x = append(part.x, d.x[i])
		part.y = append(part.y, d.y[i])
	}
	return train, test
}

// syntheticDigits makes n digit-like images without the data set, for
// tests: each class is a random 8x8 pattern, each image that pattern with
// noise, so a network can learn the classes but not trivially.
func syntheticDigits(n int, seed uint64) dataset {
	rng := rand.New(rand.NewPCG(seed, 1))
	var protos [numClasses][numFeatures]float64
	for c := range protos {
		for i := range protos[c] {
			protos[c][i] = float64(rng.IntN(maxPixel + 1))
		}
	}
	var d dataset
	for range n {
		c := rng.IntN(numClasses)
		x := make([]float64, numFeatures)
		for i := range x {
			v := protos[c][i] + rng.NormFloat64()*4
			x[i] = float64(int(min(max(v, 0), maxPixel) + 0.5))
		}
		d.x = append(d.x, x)
		d.y = append(d.y, c)
	}
	return d
}
