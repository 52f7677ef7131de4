"""The tree of API keys: a key minted through another key stays under it.

A key created with a key (POST /api/v1/keys/ authenticated by that key) records it as its
`parent`. Its runs count against every ancestor's requests/minute (accounts/throttling.py),
tokens/minute (billing/ratelimit.py) and key budgets (billing/budgets.py), and revoking a key
revokes its descendants (accounts.services.revoke_api_key). The depth is bounded, so the whole
chain of ancestors loads with the key in one query and travels with it in the key cache
(accounts.services._lookup): the hot path walks it without a query.
"""

from __future__ import annotations

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


async def achain(key: APIKey) -> list[APIKey]:
    if chain_loaded(key):
        return chain(key)
    from relay.asyncdb import run_db

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
