// Command digits trains a small neural network on scikit-learn's
// handwritten digits and exports it as ONNX, to give Drover a real model to
// push, pull and serve.
//
// It trains a multilayer perceptron (ReLU hidden layers, softmax head)
// with Adam on 80% of the 1,797 images, reports its accuracy on the other
// 20%, and writes model.onnx, reference.json (a few test images with the
// probabilities the model gives them) and a model card, README.md, into
// -out:
//
//	go run . -hidden 32 -epochs 30 -out /tmp/digits-v1
//
// With -finetune-head it loads a model it exported before, freezes every
// layer but the classifier head, retrains the head alone, exports the
// result, and reports what pushing it after the old one would move:
//
//	go run . -finetune-head /tmp/digits-v1 -epochs 10 -seed 2 -out /tmp/digits-v2
//
// The data set comes with Debian's python3-sklearn package (-data names
// another copy).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/droverhq/drover/artifact"
)

// The split is fixed, whatever -seed says, so that a fine-tuned head is
// tested on the images its model never trained on.
const (
	splitSeed    = 1
	testFraction = 0.2
)

const dataDescription = "Optical Recognition of Handwritten Digits (E. Alpaydin and C. Kaynak, 1998; UCI Machine Learning Repository, CC BY 4.0), as shipped by scikit-learn"

func main() {
	err := run(context.Background(), os.Args[1:], os.Stdout)
	if errors.Is(err, flag.ErrHelp) {
		return // the flag package has printed the usage
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "digits:", err)
		os.Exit(1)
	}
}

// options are the command's flags.
type options struct {
	data     string
	hidden   []int
	epochs   int
	seed     uint64
	lr       float64
	batch    int
	out      string
	name     string
	finetune string // the model directory whose head to retrain; empty to train from scratch
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("digits", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	hidden := fs.String("hidden", "32", "hidden layer widths, comma separated (empty: no hidden layer)")
	fs.StringVar(&o.data, "data", debianDigits, "the digits data set, digits.csv.gz as scikit-learn ships it")
	fs.IntVar(&o.epochs, "epochs", 30, "passes over the training images")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the initial weights and of the order of the images")
	fs.Float64Var(&o.lr, "lr", 0.001, "Adam's learning rate")
	fs.IntVar(&o.batch, "batch", 32, "images per training step")
	fs.StringVar(&o.out, "out", "digits-model", "directory to write model.onnx, reference.json and README.md into")
	fs.StringVar(&o.name, "name", "digits-mlp", "the model's name in its card")
	fs.StringVar(&o.finetune, "finetune-head", "", "retrain only the classifier head of the model exported in this directory")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	hiddenSet := false
	fs.Visit(func(f *flag.Flag) { hiddenSet = hiddenSet || f.Name == "hidden" })
	if hiddenSet && o.finetune != "" {
		return options{}, errors.New("-hidden and -finetune-head: the layers come from the model being fine-tuned")
	}
	for _, s := range strings.Split(*hidden, ",") {
		if s = strings.TrimSpace(s); s == "" {
			continue
		}
		w, err := strconv.Atoi(s)
		if err != nil || w < 1 {
			return options{}, fmt.Errorf("-hidden: %q is not a layer width", s)
		}
		o.hidden = append(o.hidden, w)
	}
	if o.epochs < 1 || o.batch < 1 || o.lr <= 0 {
		return options{}, errors.New("-epochs, -batch and -lr must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string, stdout io.Writer) error {
	o, err := parseFlags(args, os.Stderr)
	if err != nil {
		return err
	}
	all, err := loadDigits(o.data)
	if err != nil {
		return err
	}
	train, test := split(all, testFraction, splitSeed)
	cfg := trainConfig{epochs: o.epochs, batch: o.batch, lr: o.lr, seed: o.seed}
	progress := func(epoch int, loss float64) {
		fmt.Fprintf(stdout, "epoch %d/%d: loss %.4f\n", epoch, o.epochs, loss)
	}

	var m *mlp
	var how string
	if o.finetune == "" {
		m = newMLP(append(append([]int{numFeatures}, o.hidden...), numClasses), o.seed)
		fmt.Fprintf(stdout, "training %v (%d parameters) on %d images\n", m.widths(), m.numParams(), train.len())
		m.fit(inputMatrix(train.x), train.y, cfg, progress)
		how = fmt.Sprintf("Adam, learning rate %g, batch %d, %d epochs, seed %d.", o.lr, o.batch, o.epochs, o.seed)
	} else {
		b, err := os.ReadFile(filepath.Join(o.finetune, modelFile))
		if err != nil {
			return fmt.Errorf("-finetune-head: %w", err)
		}
		if m, err = decodeONNX(b); err != nil {
			return fmt.Errorf("-finetune-head: %s: %w", o.finetune, err)
		}
		fmt.Fprintf(stdout, "loaded %v from %s: test accuracy %.4f\n", m.widths(), o.finetune, m.accuracy(test))
		fmt.Fprintf(stdout, "retraining the head alone on %d images\n", train.len())
		m.fitHead(inputMatrix(train.x), train.y, cfg, progress)
		how = fmt.Sprintf("Fine-tuned from %s: every layer frozen but the head, which was retrained with Adam, learning rate %g, batch %d, %d epochs, seed %d.",
			filepath.Base(o.finetune), o.lr, o.batch, o.epochs, o.seed)
	}
	acc := m.accuracy(test)
	fmt.Fprintf(stdout, "test accuracy %.4f (%d images)\n", acc, test.len())

	info := cardInfo{
		Name: o.name, Data: dataDescription, TrainSize: train.len(), TestSize: test.len(),
		Training: how, Accuracy: acc, Command: "cd examples/digits && go run . " + strings.Join(args, " "),
	}
	if err := export(o.out, m, test, info); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s, %s and %s in %s\n", modelFile, referenceFile, cardFile, o.out)
	if o.finetune != "" {
		d, err := measureDelta(ctx, o.finetune, o.out, artifact.ChunkerParams{})
		if err != nil {
			return fmt.Errorf("compare with %s: %w", o.finetune, err)
		}
		fmt.Fprintf(stdout, "against %s: %s\n", o.finetune, d)
	}
	return nil
}
