"""The training application around the agents: ``ddpo train`` / :func:`agents.job.train.train` with its config
tree (:mod:`agents.job.config`), checkpoints and resume, the fixed evaluation set, held-out monitoring, callbacks
that show progress and image grids, and weight export. The algorithms (:mod:`agents`) never import this package.
"""
