"""Django integration: add ``"memory_worker.contrib.django"`` to ``INSTALLED_APPS``.

- ``settings.MEMORY_WORKER``: a dict keyed by the variables of SPEC §3
  (``{"FLAG_ZEP_WRITE": True, "REDIS_URL": "redis://...", ...}``). Environment
  variables win over it. ``AppConfig.ready()`` validates the merged result like
  ``Settings.from_env`` and configures the process's runtime (``apps``).
- ``settings.MEMORY_WORKER_HOST_LOGGING = True`` hands the library's events to
  Django's logging instead of the library's own stderr handler.
- ``python manage.py memory_worker <subcommand>`` is the ``memory-worker`` CLI
  with these settings in force (``management/commands/memory_worker.py``).
- ``memory_worker.contrib.django.views.metrics``: the metrics helper as a view.
"""
