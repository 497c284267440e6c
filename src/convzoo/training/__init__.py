"""Training: the loop (``loop.fit``, and ``loop.train``, the Python API's ``convzoo.train``),
what a stage is built from (``setup``), the schedule, optimizers, EMA, data parallelism,
stop requests, the run directory and its lock, the divergence check and the progress log.
Nothing outside training and the commands that start it (``api`` stays free of it) imports
this package (docs/architecture.md)."""
