"""Keep the API key cache honest: any change to a key or its owner drops the cached copy.

Dropped now and again once the change commits: a request between the two reads the row as it
was before the commit and must not cache that state (accounts.services, the key cache's markers).
"""

from django.contrib.auth.models import Group
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from accounts.key_tree import descendants
from accounts.models import APIKey, User
from accounts.services import forget_cached_key, sync_team_group


@receiver(post_save, sender=APIKey)
@receiver(post_delete, sender=APIKey)
def _key_changed(sender, instance, created=False, **kwargs):
    forget_cached_key(instance.prefix)
    # Cached keys carry their ancestors (their limits, expiry, revocation): a changed key is
    # looked up afresh under every key below it too. A new key has none.
    if not created and kwargs.get("signal") is post_save:
        for child in descendants(instance):
            forget_cached_key(child.prefix)


@receiver(post_save, sender=User)
def _team_changed(sender, instance, raw=False, update_fields=None, **kwargs):
    if not raw and (update_fields is None or "team" in update_fields):
        sync_team_group(instance)


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def _owner_changed(sender, instance, **kwargs):
    for prefix in APIKey.objects.filter(owner_id=instance.pk).values_list("prefix", flat=True):
        forget_cached_key(prefix)


@receiver(m2m_changed, sender=User.groups.through)
def _role_changed(sender, instance, **kwargs):
    if isinstance(instance, User):
        _owner_changed(User, instance)


@receiver(m2m_changed, sender=Group.permissions.through)
def _role_permissions_changed(sender, instance, **kwargs):
    """A role's permissions changed: every key of its members must be looked up afresh."""
    if isinstance(instance, Group):
        prefixes = APIKey.objects.filter(owner__groups=instance).values_list("prefix", flat=True)
        for prefix in prefixes:
            forget_cached_key(prefix)
