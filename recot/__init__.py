"""recot: optimal transport for recommendation and set/graph learning."""
__version__ = "0.1.0"
