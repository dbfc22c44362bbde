"""The pieces of static int8 that ONNX Runtime's quantizer does not do itself (or not well enough):
calibration with real histograms, cross-layer equalization, rounding by optimisation with bias
correction, a floor on weight ranges for int32 biases, trials scored on held-back calibration
data, and layers kept float by editing a quantized graph. The passes that use them are
converters/passes/onnx_quantize.py and onnx_guarded_int8.py."""
