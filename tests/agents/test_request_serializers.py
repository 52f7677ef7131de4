"""The request bodies of the model calls share their serializer's fields (relay.api.serializers.SharedFieldsMixin).

DRF deep-copies every declared field for each serializer it creates: for the query body that was
most of its validation, on every SSE, WebSocket and /api/v1/query call. Shared, the fields must
hold nothing of one request that another could see, including when DB threads validate at once.
"""

import threading

import pytest
from rest_framework import serializers

from agents.api.openai_api import ChatCompletionSerializer
from agents.api.serializers import QuerySerializer


@pytest.mark.parametrize("serializer", [QuerySerializer, ChatCompletionSerializer])
def test_the_model_call_bodies_build_their_fields_once(serializer):
    # Control: SharedFieldsMixin in the serializer's bases; without it each instance copies its own.
    assert serializer(data={}).fields is serializer(data={}).fields


def _outcome(body: dict):
    checked = QuerySerializer(data=body)
    return checked.validated_data if checked.is_valid() else checked.errors


def test_shared_fields_keep_each_bodys_values_and_errors_its_own():
    good = {"query": " Hello\x01 there ", "agent_type": "general", "max_tokens": 5, "temperature": 0.5}
    bad = {"query": 5, "agent_type": "nobody", "max_tokens": 0, "temperature": "hot", "cache": "maybe"}
    expected_good, expected_bad = _outcome(good), _outcome(bad)
    assert expected_good["query"] == " Hello there " and expected_good["max_tokens"] == 5
    assert set(expected_bad) == {"query", "agent_type", "max_tokens", "temperature", "cache"}

    mismatches, start = [], threading.Barrier(8)

    def validate(index: int):
        start.wait()
        for turn in range(300):
            body, expected = (good, expected_good) if (index + turn) % 2 else (bad, expected_bad)
            if _outcome(body) != expected:
                mismatches.append((index, turn))

    threads = [threading.Thread(target=validate, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert mismatches == []
    assert isinstance(QuerySerializer(data=good).fields["query"], serializers.CharField)
