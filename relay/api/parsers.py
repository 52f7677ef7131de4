from django.conf import settings
from rest_framework.parsers import JSONParser

from relay.api.errors import PayloadTooLarge


class BoundedJSONParser(JSONParser):
    """JSONParser that refuses bodies over RELAY_MAX_BODY_BYTES instead of reading them whole.

    DRF's own parser reads the stream without limit; Content-Length can be absent (chunked).
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.RELAY_MAX_BODY_BYTES
        if stream is None:
            return super().parse(stream, media_type, parser_context)
        body = stream.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is larger than {limit} bytes.")
        import io

        return super().parse(io.BytesIO(body), media_type, parser_context)
