"""The worker side: runs under horovodrun on every rank (``python -m hvdtrain.worker``).

main.py is the entry, fixed.py and elastic.py the two modes, loop.py the one training core they
share (job.py builds what a rank trains with, resume.py restores and announces, step.py is one
optimizer step); data, models, optimizer, checkpoints, heartbeats and fault hooks are its parts. Nothing here
draws on a terminal: rank 0 emits events (hvdtrain/events.py) for the launcher to draw.
"""
