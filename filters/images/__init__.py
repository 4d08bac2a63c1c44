"""Image filters: perceptual-hash near-duplicate and benchmark removal."""
