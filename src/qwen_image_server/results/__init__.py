"""Where result images live, and the signed URLs that hand them out."""

from qwen_image_server.results.local import LocalResultStore
from qwen_image_server.results.signing import (
    InvalidSecretFile,
    InvalidSignature,
    ResultExpired,
    SignedUrl,
    UrlSigner,
    load_or_create_secret,
)
from qwen_image_server.results.store import ResultNotFound, ResultStore, is_valid_key, result_key

__all__ = [
    "InvalidSecretFile",
    "InvalidSignature",
    "LocalResultStore",
    "ResultExpired",
    "ResultNotFound",
    "ResultStore",
    "SignedUrl",
    "UrlSigner",
    "is_valid_key",
    "load_or_create_secret",
    "result_key",
]
