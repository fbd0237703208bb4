"""Pieces every stage shares, below all of them: user errors and the CLI's one-line error exit (`errors`),
device choice (`device`), every plot (`plots`), and the weights + JSON folder convention (`folders`).

Nothing here imports a stage; each module is imported on its own (`from common.errors import UserError`), so
the shard builder does not pull in torch or matplotlib.
"""
