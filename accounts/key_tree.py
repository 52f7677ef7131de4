"""The tree of API keys, and which keys lie within a key's powers.

A key minted through another key stays under it.

A key created with a key (POST /api/v1/keys/ authenticated by that key) records it as its
`parent`. Its runs count against every ancestor's requests/minute (accounts/throttling.py),
tokens/minute (billing/ratelimit.py) and key budgets (billing/budgets.py), and revoking a key
revokes its descendants (accounts.actions.keys.revoke_api_key). The depth is bounded, so the whole
chain of ancestors loads with the key in one query and travels with it in the key cache
(accounts.services._lookup): the hot path walks it without a query.

A key may see, mint, rotate or revoke only keys within its own powers (`key_within`): a key
scoped to one agent must not hand out, or take over, its owner's admin key.
"""

from __future__ import annotations

import ipaddress

from accounts.models import APIKey

MAX_ANCESTORS = 8
# select_related path that loads every ancestor a key can have together with the key.
CHAIN = "__".join(["parent"] * MAX_ANCESTORS)


def chain_loaded(key: APIKey) -> bool:
    """Can ancestors(key) answer without a query?"""
    current = key
    while current.parent_id is not None:
        if not APIKey.parent.is_cached(current):
            return False
        current = current.parent
    return True


def ancestors(key: APIKey) -> list[APIKey]:
    """The keys above key, nearest first (a query only for links not loaded with the key)."""
    found, current = [], key
    # The bound also stops a cycle written by hand into the database.
    while current.parent_id is not None and len(found) <= MAX_ANCESTORS:
        if not APIKey.parent.is_cached(current):
            loaded = APIKey.objects.select_related(CHAIN).filter(pk=current.parent_id).first()
            if loaded is None:
                break
            current.parent = loaded
        current = current.parent
        found.append(current)
    return found


def chain(key: APIKey) -> list[APIKey]:
    """The key, then its ancestors: every key whose limits bind a request made with it."""
    return [key, *ancestors(key)]


def listed(key: APIKey, field: str) -> set[str] | None:
    """The names a request made with key may use in `field` ("allowed_agents", "allowed_models"):
    those every key of its chain lists (an empty list limits nothing); None when none limits it.

    Limits are narrowed along the chain when used, not only copied when a key is minted: narrowing
    a key narrows every key below it at once.
    """
    allowed = None
    for link in chain(key):
        names = getattr(link, field)
        if names:
            allowed = set(names) if allowed is None else allowed & set(names)
    return allowed


def permits(key: APIKey | None, field: str, name: str) -> bool:
    """May a request made with key (None: no key) use `name` under `field`? (see `listed`)"""
    allowed = listed(key, field) if key is not None else None
    return allowed is None or name in allowed


def scopes(key: APIKey) -> set[str]:
    """The scopes every key of the chain holds: a key acts with no more than the keys above it do now."""
    held = set(key.scopes)
    for ancestor in ancestors(key):
        held &= set(ancestor.scopes)
    return held


async def achain(key: APIKey) -> list[APIKey]:
    if chain_loaded(key):
        return chain(key)
    from relay.eventloop.db import run_db

    return await run_db(chain, key)


def descendants(key: APIKey | int, *, lock: bool = False) -> list[APIKey]:
    """Every key below key, level by level (one query per level; `lock`: rows locked for update).

    Locking each level before reading the next means a child being minted concurrently under
    one of them (create_api_key locks its parent) is either seen here or sees its parent revoked.
    """
    frontier, found = [key if isinstance(key, int) else key.pk], []
    for _level in range(MAX_ANCESTORS + 1):
        rows = APIKey.objects.filter(parent_id__in=frontier).select_related("owner").order_by("pk")
        level = list(rows.select_for_update(of=("self",)) if lock else rows)
        if not level:
            break
        found += level
        frontier = [child.pk for child in level]
    return found


def subtree_ids(key_id: int) -> list[int]:
    """The key and every key below it: whose usage counts against the key's budgets."""
    return [key_id, *(child.pk for child in descendants(key_id))]


# --- powers -----------------------------------------------------------------------------------

def _listed_within(asked: list, limit: list) -> bool:
    # An empty list means "any": only an unrestricted key holds an unrestricted one.
    return not limit or (bool(asked) and set(asked) <= set(limit))


def _ranges_within(asked: list[str], limit: list[str]) -> bool:
    if not limit:
        return True
    if not asked:
        return False
    try:
        outer = [ipaddress.ip_network(cidr, strict=False) for cidr in limit]
        inner = [ipaddress.ip_network(cidr, strict=False) for cidr in asked]
    except (ValueError, TypeError):
        return False
    return all(any(net.version == bound.version and net.subnet_of(bound) for bound in outer) for net in inner)


def _at_most(asked, limit) -> bool:
    # None means "no limit" (no expiry, no rate): only an unlimited key holds an unlimited one.
    return limit is None or (asked is not None and asked <= limit)


# What binds a key from outside its own fields: billing's hard key budgets, registered by
# BillingConfig.ready (billing sits above accounts). Each takes key ids and returns those it binds.
_BINDINGS: list = []


def register_binding(binding) -> None:
    if binding not in _BINDINGS:
        _BINDINGS.append(binding)


def budgeted(acting: APIKey) -> set[int]:
    """The keys among `acting` and those above it that a hard key budget binds."""
    ids = [k.pk for k in chain(acting)]
    bound: set[int] = set()
    for binding in _BINDINGS:
        bound |= binding(ids)
    return bound


def key_within(candidate: APIKey, acting: APIKey, *, lineage: set | None = None,
               bound_by: set[int] | None = None) -> bool:
    """Are all of candidate's powers within acting's? (acting itself and its descendants are.)

    Powers: the owner, scopes, agents, models, address ranges, expiry, requests/minute,
    tokens/minute, and the hard key budgets binding acting, which must bind candidate too (its
    lineage, itself and its ancestors, holds their keys). `lineage` and `bound_by` (budgeted(acting))
    may be given when many candidates are checked at once.
    """
    if lineage is None:
        lineage = {key.pk for key in chain(candidate)}
    if bound_by is None:
        bound_by = budgeted(acting)
    return (candidate.owner_id == acting.owner_id
            and set(candidate.scopes) <= set(acting.scopes)
            and _listed_within(candidate.allowed_agents, acting.allowed_agents)
            and _listed_within(candidate.allowed_models, acting.allowed_models)
            and _ranges_within(candidate.allowed_ips, acting.allowed_ips)
            and _at_most(candidate.expires_at, acting.expires_at)
            and _at_most(candidate.requests_per_minute, acting.requests_per_minute)
            and _at_most(candidate.tokens_per_minute, acting.tokens_per_minute)
            and bound_by <= lineage)


def keys_within(owner, acting: APIKey | None):
    """The owner's keys a request may see and act on: all of them for the owner signed in (session,
    JWT), only those within the key's powers for a key. A queryset, so lookups stay 404 outside it."""
    keys = APIKey.objects.filter(owner=owner)
    if acting is None:
        return keys
    rows = list(keys.only("pk", "owner_id", "parent_id", "scopes", "allowed_agents", "allowed_models",
                          "allowed_ips", "expires_at", "requests_per_minute", "tokens_per_minute"))
    parents = {key.pk: key.parent_id for key in rows}  # a key's ancestors share its owner
    bound_by = budgeted(acting)

    def lineage(key_id):
        found = set()
        while key_id is not None and key_id not in found:
            found.add(key_id)
            key_id = parents.get(key_id)
        return found

    return keys.filter(pk__in=[key.pk for key in rows
                               if key_within(key, acting, lineage=lineage(key.pk), bound_by=bound_by)])
