"""avret: audio-visual retrieval with multimodal knowledge distillation."""
__version__ = "0.1.0"
