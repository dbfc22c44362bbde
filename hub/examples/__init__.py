"""Small, self-contained example models and data for trying the hub end to end.

Submodules (import them directly; this package imports nothing heavy on its own):

* :mod:`edgehub.hub.examples.fashion_mnist` - numpy loader for the Fashion-MNIST IDX files
  shipped by the Debian package ``dataset-fashion-mnist``.
* :mod:`edgehub.hub.examples.nets` - small PyTorch architectures (CNN, ResNet, MobileNet,
  Transformer text classifier) and ``module:factory`` style factories.
* :mod:`edgehub.hub.examples.training` - a tiny CPU training loop, accuracy evaluation and a
  synthetic text-classification data set.
"""

__all__ = ["fashion_mnist", "nets", "training"]
