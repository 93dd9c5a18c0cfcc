"""Callbacks: Standard Webhooks signing and the sender that delivers the outbox (tasks/outbox.py)."""
