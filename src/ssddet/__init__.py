"""ssddet: object detectors that stay accurate when the training boxes are wrong (SSD-Det, OA-MIL)."""
__version__ = "0.1.0"
