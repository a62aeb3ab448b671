"""florence-watch: watch folders, describe images with Florence-2, index and tag them."""

__version__ = "0.1.0"
