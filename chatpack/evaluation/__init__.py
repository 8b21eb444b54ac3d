"""The ``evaluate`` step: the eval set, quality metrics, per-flavour speed runs, the champion rule and the report."""
