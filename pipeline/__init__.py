"""editgen runtime: config, storage, partitions, runner, Ray bootstrap and CLI."""
