"""encdec: warm-started encoder-decoder Transformers for PyTorch, TensorFlow (Keras 3) and Flax (NNX)."""

__version__ = "0.1.0"
