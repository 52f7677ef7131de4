"""Per-key request rate limits (DRF throttling on the shared cache, so Redis in production)."""

from rest_framework.throttling import SimpleRateThrottle

from accounts.permissions import request_key


class APIKeyRateThrottle(SimpleRateThrottle):
    """Applies a key's own `requests_per_minute`; requests without a key are not limited here."""

    scope = "api_key"

    def allow_request(self, request, view):
        key = request_key(request)
        if key is None or not key.requests_per_minute:
            return True
        self.rate = f"{key.requests_per_minute}/min"
        self.num_requests, self.duration = self.parse_rate(self.rate)
        self.key = f"throttle_key_{key.pk}"
        self.history = self.cache.get(self.key, [])
        self.now = self.timer()
        while self.history and self.history[-1] <= self.now - self.duration:
            self.history.pop()
        if len(self.history) >= self.num_requests:
            return self.throttle_failure()
        allowed = self.throttle_success()
        # For the X-RateLimit-Remaining-Requests header of the model-call responses (billing.ratelimit).
        request._request.rate_limit_remaining_requests = self.num_requests - len(self.history)
        return allowed

    def get_rate(self):
        return None  # set per request from the key

    def get_cache_key(self, request, view):
        return None


class LoginRateThrottle(SimpleRateThrottle):
    """Throttles credential guessing per client address and per username."""

    scope = "login"

    def get_cache_key(self, request, view):
        from relay.http import client_ip

        return self.cache_format % {"scope": self.scope, "ident": client_ip(request.META) or "unknown"}
