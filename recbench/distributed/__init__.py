"""Embedding tables sharded across devices with TorchRec (``trainer=torchrec``).

An optional extra (``pip install 'recbench[torchrec]'``): nothing here imports torchrec until a
run asks for it, so ``import recbench`` works without it.

- ``embedding``: ``ShardedFeatureEmbedding`` (``FeatureEmbedding``'s forward over a TorchRec
  ``EmbeddingBagCollection``), swapping it into a model, planning and wrapping the model in
  ``DistributedModelParallel``;
- ``train``: the ``trainer=torchrec`` settings and the training loop that runs them.
"""
