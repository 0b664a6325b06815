"""ens: hardware-aware neural architecture search for image restoration."""

__version__ = "0.1.0"
