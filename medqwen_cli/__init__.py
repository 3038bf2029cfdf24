"""medqwen: Sparse Spectral LoRA for continual adaptation of medical vision-language models."""

__version__ = "0.1.0"
