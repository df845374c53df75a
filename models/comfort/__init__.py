"""Indoor comfort model: forecast a room's temperature 30 and 60 minutes ahead.

``spec`` (the feature spec), ``data`` (UCI Appliances loading and feature windows) and
``evaluate`` are torch-free; ``net`` is the torch module, ``train`` builds the shipped
``comfort`` ONNX artifact and ``card`` writes its model card.
"""
