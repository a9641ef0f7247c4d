"""Proving that an artifact computes what the model computes: parity, layerwise comparison, golden outputs and
their pictures; sees backends only through the registry and the interface, never imports measuring."""
