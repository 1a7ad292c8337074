"""Training: fetch the base model, fine-tune it, convert and calibrate what is served, evaluate it."""
