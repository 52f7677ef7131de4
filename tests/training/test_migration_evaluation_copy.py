"""training 0003: runs already made of sets made from versions are marked evaluation_copy, and back."""

import pytest

from tests.support.migrations import head, migrate

BEFORE = [("training", "0002_evaluations")]
AFTER = [("training", "0003_evaluation_copy_runs")]


@pytest.fixture
def at_0002(transactional_db, users):
    apps = migrate(BEFORE)
    try:
        yield apps
    finally:
        migrate(head())


def _run_of(apps, user, source: str) -> str:
    """A conversation an evaluation of a set of source ran, excluded as every run was before 0003."""
    conversation = apps.get_model("agents", "Conversation").objects.create(
        organization_id=user.organization_id, user_id=user.pk, agent="general", title="Evaluation run")
    apps.get_model("training", "ConversationExclusion").objects.create(conversation=conversation, reason="evaluation")
    evaluation_set = apps.get_model("training", "EvaluationSet").objects.create(
        organization_id=user.organization_id, name=source, source=source)
    item = apps.get_model("training", "EvaluationItem").objects.create(evaluation_set=evaluation_set, position=1,
                                                                       prompt="a question")
    evaluation = apps.get_model("training", "Evaluation").objects.create(
        organization_id=user.organization_id, evaluation_set=evaluation_set, targets=["m"])
    apps.get_model("training", "EvaluationResult").objects.create(evaluation=evaluation, item=item, target="m",
                                                                  status="complete", conversation_id=conversation.pk)
    return conversation.pk


def test_runs_of_sets_made_from_versions_are_marked_and_unmarked(at_0002, users):
    copy, upload = _run_of(at_0002, users["admin"], "dataset"), _run_of(at_0002, users["admin"], "upload")

    def reasons(apps):
        return dict(apps.get_model("training", "ConversationExclusion").objects.values_list("conversation_id", "reason"))

    assert reasons(migrate(AFTER)) == {copy: "evaluation_copy", upload: "evaluation"}
    assert reasons(migrate(BEFORE)) == {copy: "evaluation", upload: "evaluation"}
