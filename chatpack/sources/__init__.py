"""Where a model comes from (hub, local folder, bundled, test fixture), the local cache, and the fetch step.

``resolve`` parses a source and materialises it; ``fetch`` is the ``fetch_model`` step (and reads a fetch run back).
"""
