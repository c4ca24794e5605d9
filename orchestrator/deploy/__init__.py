"""A saved student as something to run: a text-in, predictions-out object and the MLflow pyfunc
model (``serving``), TorchScript + ONNX export (``export``) and the standalone ``predict.py`` it
ships (``predict_standalone``)."""
