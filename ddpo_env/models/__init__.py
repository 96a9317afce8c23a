"""The models this project builds or ships, with no download: ``digits`` (the embedded default model) and
``shapes`` (the compositional scenes model), what they share (``embedded``: text encoder, schedule, folder format),
their training scripts (``train_default``, ``train_shapes``), the digit classifier that judges the default model, and
``tiny`` (random miniatures of Stable Diffusion 1 and 3 for tests). Which model a name builds: :mod:`ddpo_env.tasks`.
"""
