"""The base layer: user errors, crash-safe file writes, device and dtype names, config-file machinery, the CLI
wrapper. It imports no other package of the project; every other package may import it."""
