"""Serving logged chat models: the OpenAI-compatible HTTP server and batch scoring on Spark."""
