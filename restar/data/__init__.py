"""Data: freeze the upstream reviews into a fixed split, prepare them for training, clean review text."""
