"""A model's answer with a NUL character in it is stored, not lost (agents.actions.runs.storable).

PostgreSQL stores no NUL in a text or JSON column. A model (or a tool) may still write one, and the
closing that stored it verbatim failed as a whole: a 500 for a non-streamed answer, the run left
for recovery, its audit event late. The client gets the answer as the model wrote it; the stored
copy has U+FFFD where each NUL was.
"""

import pytest

from agents.models import Message
from billing.models import UsageRecord
from tests.reconciled import assert_reconciled

pytestmark = pytest.mark.django_db(transaction=True)

@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_with_a_nul_is_answered_and_stored(asgi_server, user_key, fake_upstream, upstream_model, stream):
    import openai

    fake_upstream.configure(reply="before\x00after")
    client = openai.OpenAI(base_url=f"{asgi_server.url}/v1", api_key=user_key, max_retries=0)
    asked = {"model": upstream_model, "messages": [{"role": "user", "content": "Hi"}]}

    if stream:
        said = "".join(chunk.choices[0].delta.content or "" for chunk in client.chat.completions.create(
            **asked, stream=True) if chunk.choices)
    else:
        said = client.chat.completions.create(**asked).choices[0].message.content

    assert said == "before\x00after"
    answer = Message.objects.get(role="assistant")
    assert (answer.status, answer.content) == ("complete", "before\ufffdafter")
    assert UsageRecord.objects.get(message_id=answer.pk).status == "complete"
    assert_reconciled()
