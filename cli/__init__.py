"""The ``memory-worker`` operator CLI: thin click commands over ``memory_worker``."""
