"""Provenance of generated images: marks that say where a picture came from."""
