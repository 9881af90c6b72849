"""After training: the process `hvdtrain eval`, `predict` and `export` start
(``python -m hvdtrain.worker.after``, under horovodrun for `eval --np N`). It reads one
checkpoint and its model card (hvdtrain/card.py) and writes its result as JSON for the launcher
to draw; torch lives here, never in the `hvdtrain` process.
"""
