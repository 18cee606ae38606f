"""medforensics: detect AI-generated and tampered medical images."""

__version__ = "0.1.0"
