"""The streaming side: the faust app, its agents, the retrainer and the ``unlearn`` CLI."""
