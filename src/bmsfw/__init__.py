"""bmsfw: safe firmware updates for smart battery management systems."""

from bmsfw.errors import BmsfwError

__all__ = ["BmsfwError", "__version__"]
__version__ = "0.1.0"
