"""mt: an encoder-decoder Transformer NMT trainer that shows what the model attends to."""

__version__ = "0.1.0"
