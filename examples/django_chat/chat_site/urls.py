"""The project's URLs: the chat app's API under ``/api/``."""

from django.urls import include, path

urlpatterns = [
    path("api/", include("chat.urls")),
]
