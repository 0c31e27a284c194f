"""Models: plain ``nn.Module``s that take a ``FeatureSchema`` and map a batch to logits (B,).

A model with an auxiliary loss (DIEN) returns ``{"logits": (B,), "aux_loss": scalar}`` in training.
"""

from hydra.utils import instantiate

from recbench.errors import ConfigError


def build_model(cfg, schema):
    """Instantiate a model config with ``schema`` (passed through ``_partial_`` so Hydra does not
    try to merge the schema's tensors into the config). A layer's ``ValueError`` about its
    settings becomes a ``ConfigError`` that names the model."""
    factory = instantiate(cfg, _partial_=True)
    try:
        return factory(schema=schema)
    except ValueError as exc:
        name = str(cfg.get("_target_", "")).rsplit(".", 1)[-1] or "the model"
        raise ConfigError(
            f"{name} refused its settings: {exc}. Change that model.* override, or the model's "
            "config under configs/model/"
        ) from exc


def used_inputs(model, batch) -> set[str]:
    """The batch keys ``model`` reads, in training and in evaluation, found by running a copy of
    it once on ``batch``. The loader then gathers only those (histories cost 100 values a row)."""
    import copy

    import torch

    seen: set[str] = set()

    class Recorder(dict):
        def __getitem__(self, key):
            seen.add(key)
            return super().__getitem__(key)

        def get(self, key, default=None):
            seen.add(key)
            return super().get(key, default)

    probe = copy.deepcopy(model)
    with torch.no_grad(), torch.random.fork_rng():  # leave the seeded RNG stream untouched
        for training in (True, False):
            probe.train(training)
            probe(Recorder(batch))
    return seen
