"""Re*Star: re-star product reviews with a calibrated, abstaining transformer."""

__version__ = "0.1.0"
