"""Routine and presence model: the home-agnostic routine/v1 features (``spec``), the van
Kasteren 2008 data (``data``), the network (``net``) and its training loop (``fit``),
training (``train``), model card (``card``) and re-scoring (``evaluate``) of the shipped
``routine`` ONNX artifact. Only ``net``, ``fit`` and ``train`` import torch."""
