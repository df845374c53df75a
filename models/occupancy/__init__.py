"""Room occupancy model: the network (``net``), training (``train``) and model card
(``card``) of the shipped ``occupancy`` ONNX artifact; ``data`` and ``evaluate`` are
torch-free."""
