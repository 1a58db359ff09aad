"""Callbacks the template adds to Lightning's own (which are configured, not rewritten)."""
