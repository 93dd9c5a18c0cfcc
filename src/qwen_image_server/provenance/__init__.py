"""Provenance of generated images: C2PA manifests (c2pa_manifest.py) and an invisible watermark."""
