"""editgen output."""
