"""``POST /api/chat/`` and ``GET /api/metrics/``, the paths of the design notes' curl drills."""

from django.urls import path

from memory_worker.contrib.django.views import metrics

from .views import chat

urlpatterns = [
    path("chat/", chat),
    path("metrics/", metrics),
]
