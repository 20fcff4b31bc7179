"""``POST /api/chat/``: ``examples.chat_turn``'s turn (the thread's context read inline,
both sides of the turn enqueued), blocking, as Django serves it."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from examples.chat_turn import chat_turn


# The API is called with a token (the design notes send a Bearer header), not a session
# cookie, so Django's CSRF check does not apply; authenticate as your project does.
@csrf_exempt  # type: ignore[untyped-decorator]  # django ships no types
@require_POST  # type: ignore[untyped-decorator]
def chat(request: HttpRequest) -> JsonResponse:
    status, body = chat_turn(request.body)
    return JsonResponse(body, status=status)
