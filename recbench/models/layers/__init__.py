from recbench.models.layers.attention import AttentionalPooling, InteractingLayer
from recbench.models.layers.cin import CompressedInteraction
from recbench.models.layers.cross import (
    CrossLayerMixture,
    CrossLayerV2,
    CrossNetwork,
    CrossNetworkV2,
)
from recbench.models.layers.embedding import FeatureEmbedding, FeatureLinear, masked_mean
from recbench.models.layers.interaction import BiInteraction, FactorizationMachine
from recbench.models.layers.mlp import MLP, activation
from recbench.models.layers.product import InnerProduct, OuterProduct, PairwiseProduct
from recbench.models.layers.residual import ResidualUnit

__all__ = [
    "MLP",
    "AttentionalPooling",
    "BiInteraction",
    "CompressedInteraction",
    "CrossLayerMixture",
    "CrossLayerV2",
    "CrossNetwork",
    "CrossNetworkV2",
    "FactorizationMachine",
    "FeatureEmbedding",
    "FeatureLinear",
    "InnerProduct",
    "InteractingLayer",
    "OuterProduct",
    "PairwiseProduct",
    "ResidualUnit",
    "activation",
    "masked_mean",
]
