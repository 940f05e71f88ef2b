"""What training and inference share below both: checkpoint files and process groups.

- :mod:`unveil.runtime.checkpoint`: atomic, versioned checkpoint files, loaded with
  ``weights_only=True``.
- :mod:`unveil.runtime.distributed`: ``torchrun`` / DDP process-group set-up and helpers.
"""
