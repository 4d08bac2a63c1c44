"""editgen filters."""
