"""Retrieval models: audio/visual towers, the CCA baseline, training and run directories."""
