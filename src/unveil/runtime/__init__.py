"""What training and inference share below both: checkpoint files and process groups.

- :mod:`unveil.runtime.checkpoint`: atomic, versioned checkpoint files, loaded with
  ``weights_only=True``.
- :mod:`unveil.runtime.distributed`: ``torchrun`` / DDP process-group set-up and helpers.
- :mod:`unveil.runtime.device`: autocast, device transfer, DDP unwrapping and
  micro-batch contexts shared by the loop and the trainers.
"""
