"""Sub-commands of the ``unveil`` CLI; each module provides ``register(subparsers)``."""
