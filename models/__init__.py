"""editgen models."""
