"""Drafter: grows token trees (a chain is a tree of width one) with the distilled, feature-level or
n-gram drafts and q warped like p; one drafter-side round (``round``), draft-ahead and guessing."""
