"""Settings of the example chat project: the memory layer is one app and one dict.

``MEMORY_WORKER`` holds the variables of SPEC §3 with Python values; an
environment variable set to a non-empty value wins over its key here. The Zep
key is not here: it comes from the environment (``ZEP_API_KEY``), never from a
file under version control. The Celery worker and beat read the environment, so
give them the same values (``REDIS_URL``, ``ZEP_*``, ``FLAG_*``).
"""

import os
import sys
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
# The chat turn is the one the other examples serve (``examples/chat_turn.py``): the
# repository's root goes on the path, last, so that it shadows nothing installed.
if str(BASE_DIR.parent.parent) not in sys.path:
    sys.path.append(str(BASE_DIR.parent.parent))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG", "false").lower() == "true"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]", "testserver"]

INSTALLED_APPS = [
    "memory_worker.contrib.django",
    "chat",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]
ROOT_URLCONF = "chat_site.urls"
WSGI_APPLICATION = "chat_site.wsgi.application"
DATABASES: dict[str, dict[str, str]] = {}  # the example stores nothing of its own
USE_TZ = True

MEMORY_WORKER = {
    "FLAG_ZEP_WRITE": True,
    "FLAG_ZEP_READ": True,
    "ZEP_API_URL": "http://127.0.0.1:8001",  # `memory-worker zep-sim --port 8001`
    "REDIS_URL": "redis://127.0.0.1:6379/0",
    "MEMORY_READ_TIMEOUT_MS": 250,
    "MEMORY_SPOOL_DIR": BASE_DIR / "var" / "spool",
    "MEMORY_LOG_FORMAT": "json",
}
# True: the library's events go to Django's logging (LOGGING) instead of its own stderr lines.
MEMORY_WORKER_HOST_LOGGING = False
