"""Routine and presence model: the home-agnostic routine/v1 features (``spec``), the van
Kasteren 2008 data (``data``), training (``train``) and re-scoring (``evaluate``) of the
shipped ``routine`` ONNX artifact. Only ``train`` imports torch."""
