"""Provenance of generated images: C2PA manifests, an invisible watermark, and the visible mark."""
