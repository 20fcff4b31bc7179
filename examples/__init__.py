"""Example applications built on memory_worker's public API."""
