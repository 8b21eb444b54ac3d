"""The ``main`` entry point: chaining the steps with ``mlflow run`` and reusing finished ones."""
