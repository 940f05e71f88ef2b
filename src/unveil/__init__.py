"""unveil: 3D generative models of CT conditioned on masks and clinical text.

The package is organised so that data flows one way:
``data`` (read, check, preprocess) -> ``text`` (row -> sentence -> embedding) ->
``nn`` (conditional networks) -> ``generative`` (GAN / diffusion objects) ->
``train`` -> ``infer`` -> ``analysis`` / ``metrics``.
Nothing here has import-time side effects.
"""

__version__ = "0.1.0"
