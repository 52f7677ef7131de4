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


class TrainingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "training"

    def ready(self):
        from django.db.models.signals import pre_delete

        from agents.models import Conversation
        from training.actions.withdrawal import withdraw_deleted_conversation

        register_rules()
        # agents cannot import training: a conversation's deletion withdraws the versions holding it
        # through this signal, sent inside the deletion's transaction (every path: API, admin, cascade).
        pre_delete.connect(withdraw_deleted_conversation, sender=Conversation, dispatch_uid="training-withdraw")
