"""Keep the API key cache honest: any change to a key or its owner drops the cached copy.

Dropped now and again once the change commits: a request between the two reads the row as it
was before the commit and must not cache that state (accounts.services, the key cache's markers).
"""

from django.contrib.auth.models import Group, Permission
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_delete
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


def _forget_keys_of(owners) -> None:
    for prefix in APIKey.objects.filter(owner__in=owners).values_list("prefix", flat=True):
        forget_cached_key(prefix)


@receiver(post_save, sender=User)
@receiver(post_delete, sender=User)
def _owner_changed(sender, instance, **kwargs):
    _forget_keys_of([instance.pk])


def _changed(instance, action: str, pk_set, linked):
    """The other side of a link that changed from `instance`'s side: the ids given, or for a clear
    (which gives none) the rows `linked` still holds before it."""
    if action == "pre_clear":
        return linked.all()
    return pk_set if action in ("post_add", "post_remove") else ()


@receiver(m2m_changed, sender=User.groups.through)
@receiver(m2m_changed, sender=User.user_permissions.through)
def _user_links_changed(sender, instance, action, pk_set, **kwargs):
    """A user's roles or own permissions changed, from the user's side or from the role's or the
    permission's (role.user_set.remove(...)): the keys of the users named."""
    if isinstance(instance, User):
        _owner_changed(User, instance)
    else:
        _forget_keys_of(User.objects.filter(pk__in=_changed(instance, action, pk_set, instance.user_set)))


@receiver(m2m_changed, sender=Group.permissions.through)
def _role_permissions_changed(sender, instance, action, pk_set, **kwargs):
    """A role's permissions changed: every key of its members must be looked up afresh."""
    if isinstance(instance, Group):
        _forget_keys_of(User.objects.filter(groups=instance))
    else:  # from the permission's side: the roles named
        groups = Group.objects.filter(pk__in=_changed(instance, action, pk_set, instance.group_set))
        _forget_keys_of(User.objects.filter(groups__in=groups))


@receiver(pre_delete, sender=Group)
def _role_deleted(sender, instance, **kwargs):
    """A deleted role's links go without m2m_changed: its members' keys are dropped while they are known."""
    _forget_keys_of(User.objects.filter(groups=instance))


@receiver(pre_delete, sender=Permission)
def _permission_deleted(sender, instance, **kwargs):
    _forget_keys_of(User.objects.filter(user_permissions=instance) | User.objects.filter(groups__permissions=instance))
