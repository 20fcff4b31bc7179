"""Integrations with web frameworks; each imports its framework, the library does not."""
