#!/usr/bin/env python
"""Django's command-line utility for the example chat project.

    ZEP_API_KEY=... python manage.py runserver 127.0.0.1:8000
    python manage.py memory_worker status
"""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chat_site.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
