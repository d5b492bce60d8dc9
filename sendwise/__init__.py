"""sendwise: ML decisions for e-commerce email."""

__version__ = "0.1.0"
