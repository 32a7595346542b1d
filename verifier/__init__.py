"""Verifier: the target model runner and rejection sampling (chain now; trees with Sequoia)."""
