"""clip-smot: out-of-distribution detection with smooth training (SMOT)."""

__version__ = "0.1.0"
