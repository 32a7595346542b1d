"""Drafter: proposes draft tokens and the distribution q each was sampled from."""
