"""editgen prompts."""
