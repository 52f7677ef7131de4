"""The error envelope itself, free of DRF imports so middleware can use it at start-up."""

from django.http import JsonResponse


def envelope(code: str, message: str, **extra) -> dict:
    return {"error": {"code": code, "message": message, **extra}}


def error_response(status_code: int, code: str, message: str, **extra) -> JsonResponse:
    """For plain Django views and middleware that answer outside DRF."""
    return JsonResponse(envelope(code, message, **extra), status=status_code)
