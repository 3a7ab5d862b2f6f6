"""encdec: warm-started encoder-decoder Transformers in PyTorch, Keras 3 and Flax NNX."""

__version__ = "0.1.0"
