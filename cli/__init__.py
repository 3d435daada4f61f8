"""The ``orchestration`` command-line program (composition root: the only place that reads settings)."""
