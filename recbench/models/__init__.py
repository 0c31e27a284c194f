"""Models: plain ``nn.Module``s that take a ``FeatureSchema`` and map a batch to logits (B,).

A model with an auxiliary loss (DIEN) returns ``{"logits": (B,), "aux_loss": scalar}`` in training.
"""

from hydra.utils import instantiate


def build_model(cfg, schema):
    """Instantiate a model config with ``schema`` (passed through ``_partial_`` so Hydra does not
    try to merge the schema's tensors into the config)."""
    return instantiate(cfg, _partial_=True)(schema=schema)
