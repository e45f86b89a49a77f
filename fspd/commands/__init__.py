"""Command-line commands, one module per group; each exposes ``register(subparsers)``."""
