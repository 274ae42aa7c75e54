"""Running a trained model: the files of an export (exported), the engines behind it: Paddle
Inference, ONNX Runtime, dygraph (engines), the Python API (predictor: ``from adkit import
Predictor``), int8 quantisation (quantize) and the HTTP service (serving). Imports every
layer below: core, evaluate, outputs, options, train."""
