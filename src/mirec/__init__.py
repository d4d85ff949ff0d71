"""mirec: multi-interest recommendation, from a raw interaction log to served top-N lists.

The public API is re-exported here; heavy libraries (torch, faiss) are imported where used.
"""

__version__ = "0.1.0"

from mirec.errors import MirecConfigError, MirecDataError, MirecError  # noqa: E402

__all__ = ["__version__", "MirecError", "MirecDataError", "MirecConfigError"]
