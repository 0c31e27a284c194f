"""recbench: train and compare the deep-learning recommender lineage."""

__version__ = "0.1.0"
