"""Fleet learning on Flower (issue 16): the Roost ServerApp (cloud side) and ClientApp (hub side)."""
