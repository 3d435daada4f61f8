"""The ``orchestration`` command-line program (the composition root: it alone reads settings)."""
