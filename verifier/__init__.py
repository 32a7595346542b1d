"""Verifier: the target's batched verify passes over every session's KV slot (continuous batching),
and rejection sampling of chains and Sequoia trees against the drafts' q."""
