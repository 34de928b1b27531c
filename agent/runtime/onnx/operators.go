package onnx

// operators is the table of implemented operators, by ONNX op_type. Each
// entry is claimed only with every ONNX backend node test that uses it
// (and only claimed operators) passing: see TestNodeConformance.
func operators() map[string]opFunc {
	ops := map[string]opFunc{
		"Add": binaryArith, "Sub": binaryArith, "Mul": binaryArith, "Div": binaryArith,
		"Pow": pow,
		"Max": variadic, "Min": variadic, "Sum": variadic, "Mean": variadic,
		"Equal": comparison, "Less": comparison, "LessOrEqual": comparison, "Greater": comparison, "GreaterOrEqual": comparison,
		"And": logical, "Or": logical, "Xor": logical,
		"Where": where,
		"PRelu": prelu,
		"Clip":  clip,
		"Gemm":  gemm, "MatMul": matMul,
		"Conv":    conv,
		"MaxPool": pool, "AveragePool": pool,
		"GlobalAveragePool": globalPool, "GlobalMaxPool": globalPool,
		"BatchNormalization":    batchNorm,
		"InstanceNormalization": instanceNorm,
		"LayerNormalization":    layerNorm,
		"LRN":                   lrn,
		"Softmax":               softmax, "LogSoftmax": softmax, "Hardmax": softmax,
		"ReduceSum": reduce, "ReduceMean": reduce, "ReduceMax": reduce, "ReduceMin": reduce, "ReduceProd": reduce,
		"ReduceL1": reduce, "ReduceL2": reduce, "ReduceLogSum": reduce, "ReduceLogSumExp": reduce, "ReduceSumSquare": reduce,
		"ArgMax": argExtreme, "ArgMin": argExtreme,
		"Cast": castOp, "CastLike": castOp,
		"Resize": resize, "Upsample": resize,
		"RNN": recurrent, "GRU": recurrent, "LSTM": recurrent,
	}
	for k, v := range unaryOps() {
		ops[k] = v
	}
	for k, v := range quantOps() {
		ops[k] = v
	}
	for k, v := range scatterOps() {
		ops[k] = v
	}
	for k, v := range indexOps() {
		ops[k] = v
	}
	for k, v := range moreOps() {
		ops[k] = v
	}
	for k, v := range shapeOps() {
		ops[k] = v
	}
	return ops
}
