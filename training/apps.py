from django.apps import AppConfig


def register_rules() -> None:
    """Training's rows belong to an organization; reading them needs manage_training (the views check it)."""
    from accounts import scoping
    from training.models import ConversationExclusion, Dataset, DatasetVersion, TrainingConsent

    scoping.register(TrainingConsent, scoping.Rule(organization="organization"))
    scoping.register(Dataset, scoping.Rule(organization="organization"))
    scoping.register(DatasetVersion, scoping.Rule(organization="dataset__organization"))
    # An exclusion is its conversation owner's choice; the organization's admins see them in the admin.
    scoping.register(ConversationExclusion, scoping.Rule(owner="conversation__user",
                                                         administered_by="conversation__organization"))


def register_evaluation_hooks() -> None:
    """Evaluation runs' conversations are not listed to their owners (agents.listing); evaluations are scoped."""
    from django.db.models import Exists, OuterRef

    from accounts import scoping
    from agents.listing import register_unlisted
    from training.models import EVALUATION_RUNS, ConversationExclusion, Evaluation, EvaluationResult, EvaluationSet

    evaluation_runs = ConversationExclusion.objects.filter(conversation=OuterRef("pk"), reason__in=EVALUATION_RUNS)
    register_unlisted("training-evaluations", lambda conversations: conversations.exclude(Exists(evaluation_runs)))
    scoping.register(EvaluationSet, scoping.Rule(organization="organization"))
    scoping.register(Evaluation, scoping.Rule(organization="organization"))
    scoping.register(EvaluationResult, scoping.Rule(organization="evaluation__organization"))


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self):
        from django.db.models.signals import pre_delete

        from agents.models import Conversation, Message
        from training.actions.withdrawal import withdraw_deleted_conversation, withdraw_deleted_message

        register_rules()
        register_evaluation_hooks()
        # agents cannot import training: a conversation's deletion withdraws the versions holding it
        # through this signal, sent inside the deletion's transaction (every path: API, admin, cascade).
        pre_delete.connect(withdraw_deleted_conversation, sender=Conversation, dispatch_uid="training-withdraw")
        # One message deleted (the admin) changes its conversation as well: the versions holding it go too.
        pre_delete.connect(withdraw_deleted_message, sender=Message, dispatch_uid="training-withdraw-message")
