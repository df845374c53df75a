"""Room occupancy model: training (``train``) of the shipped ``occupancy`` ONNX artifact."""
