"""stellakeys: the life of signing keys, from generation to forensic verification."""

__version__ = "0.1.0"
