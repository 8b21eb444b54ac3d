"""The MLflow Project's entry points, one module each (run as ``python -m steps.<name>``)."""
