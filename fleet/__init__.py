"""Fleet learning on Flower (issue 16): Roost's ServerApp (cloud) and ClientApp (hub)."""
