"""How a Heyloyalty list takes a batch of member changes: one call per member, in parallel.

Heyloyalty has no batch endpoint that answers per member, so a batch is sent as single upserts by
a small thread pool, each answered by one MemberAck. Its wire formats live here: a choice field
takes an option id, a mobile is sent as digits only (HL-A8: 4512345678), a number as its whole
part.

An upsert on an unsubscribed member reactivates it (HL-A6), and the list has no conditional
update. So every update (the core believes the member is on the list) is preceded by a read of
that member, right before the upsert: an unsubscribed member is skipped unless the integration's
reimport rule lets it back, judged on the list's fresh `unsubscribed_at`. The updates go first, in
chunks of one wave of the pool (`concurrency`, 8, at most `client.guard_batch`): one read of the
chunk's members together (`find_members`, HL-A14), then their upserts at once, with nothing else
queued before them; a member the read did not show is looked up alone (`find_member`), as is every
member once a batched read answered against HL-A14. So an update-only run costs about
1 + 1/`concurrency` calls per member instead of 2, and the window left between a member's read and
its upsert stays about one round trip. Creates and removes follow the updates. Creates
get no read of their own (it would double an initial import's calls); the core re-reads the
list's changes before each batch of creates and hands over members who appeared meanwhile as
updates (`planned='create'`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from resources.base import ListField, RemoteMember, VendorError
from resources.http import as_utc
from resources.target import MemberAck, MemberChange, WritePolicy, is_refusal

if TYPE_CHECKING:
    from resources.heyloyalty import HeyloyaltyClient

log = logging.getLogger(__name__)
WIRE_DATETIME = "%Y-%m-%d %H:%M:%S"  # HL-A3/HL-A5, UTC


def write_batch(
    client: HeyloyaltyClient,
    changes: Sequence[MemberChange],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
    concurrency: int,
) -> Iterator[MemberAck]:
    """One ack per change, yielded as the single calls complete: updates first, a chunk at a
    time, each chunk's members read together right before its upserts; then creates and removes."""
    if not changes:
        return
    updates = [c for c in changes if c.action == "update"]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        # a chunk is at most one wave of the pool, sent while nothing else waits in it: each
        # upsert leaves about one round trip after the read that guards it
        size = max(1, min(client.guard_batch, concurrency))
        for start in range(0, len(updates), size):
            chunk = updates[start : start + size]
            try:
                states = _read_chunk(client, chunk, policy, fields)
            except VendorError as exc:  # no verdict on these members: nothing sent, next run
                for change in chunk:
                    yield MemberAck(change.match_key, "error", reason=str(exc), checked=True)
                continue
            futures = [
                pool.submit(write_one, client, change, policy, fields, states.get(change.match_key))
                for change in chunk
            ]
            for future in as_completed(futures):
                yield future.result()
        others = [
            pool.submit(write_one, client, change, policy, fields)
            for change in changes
            if change.action != "update"
        ]
        for future in as_completed(others):
            yield future.result()


@dataclass(frozen=True)
class _Read:
    """What the read right before an update showed of its member (None: not on the list)."""

    found: RemoteMember | None


def _guard_value(change: MemberChange, policy: WritePolicy, values: Mapping[str, Any]) -> str:
    """The match value an update's member is read by (wire format)."""
    value = values.get(policy.match_on) or change.match_key
    return str(value).lstrip("+") if policy.match_on == "mobile" else str(value)


def _read_chunk(
    client: HeyloyaltyClient,
    chunk: Sequence[MemberChange],
    policy: WritePolicy,
    fields: Mapping[str, ListField],
) -> dict[str, _Read]:
    """The chunk's members as one read of the list shows them, by match key; members it did not
    show are left out (write_one looks each up alone). Nothing read once the batched read
    answered against HL-A14 for this client: every member is looked up alone."""
    from resources.heyloyalty_import import listed_key

    if not client.batch_guard:
        return {}
    by_value = {_guard_value(c, policy, wire_fields(c.values, fields)[0]): c for c in chunk}
    client.count_guard("guard_reads")
    with client.calls.purpose("guard read (updates)"):
        found = client.find_members(policy.match_on, list(by_value))
    if found is None:
        client.batch_guard = False
        log.warning(
            "heyloyalty: a members read filtered on %s answered members not asked for (HL-A14 "
            "does not hold); members are read one by one before their updates",
            policy.match_on,
        )
        return {}
    return {
        change.match_key: _Read(found[key])
        for value, change in by_value.items()
        if (key := listed_key(value, policy.match_on)) in found
    }


def write_one(
    client: HeyloyaltyClient,
    change: MemberChange,
    policy: WritePolicy,
    fields: Mapping[str, ListField],
    read: _Read | None = None,
) -> MemberAck:
    """Remove, or check-then-upsert, one member; a refusal or a failure is its ack. `read`: the
    member's state as a read of its chunk showed it just now (else it is looked up alone)."""
    key = change.match_key
    if change.action == "remove":
        try:
            client.remove_member(str(change.member_id))
        except VendorError as exc:
            return _failed(key, exc, checked=False)
        return MemberAck(key, "removed", member_id=change.member_id)
    values, dropped = wire_fields(change.values, fields)
    checked = change.action == "update"
    if checked:
        try:
            skip = _check_before_update(client, change, policy, values, read)
        except VendorError as exc:  # no verdict on the member: nothing was sent, try next run
            return MemberAck(key, "error", reason=str(exc), checked=True)
        if skip is not None:
            return skip
    try:
        result = client.upsert_member(policy.match_on, values, policy.flags)
    except VendorError as exc:
        return _failed(key, exc, checked=checked)
    return MemberAck(
        key,
        "created" if result.action == "create" else "updated",  # the list's word, not the plan's
        member_id=result.member_id,
        dropped=tuple(dropped),
        checked=checked,
    )


def _failed(key: str, exc: VendorError, *, checked: bool) -> MemberAck:
    if is_refusal(exc):
        return MemberAck(key, "refused", reason=exc.message, checked=checked)
    return MemberAck(key, "error", reason=str(exc), checked=checked)


def _check_before_update(
    client: HeyloyaltyClient,
    change: MemberChange,
    policy: WritePolicy,
    values: dict[str, Any],
    read: _Read | None = None,
) -> MemberAck | None:
    """The member read right before its update (by its chunk's read, or alone now); an ack that
    skips it, or None to send.

    Skipped: an unsubscribed member the reimport rule does not let back (HL-A6), a member gone
    from the list under update_only, and a member that appeared on the list under create_only.
    """
    key = change.match_key
    if read is not None:
        found = read.found
    else:
        client.count_guard("guard_lookups")
        with client.calls.purpose("guard lookup"):
            found = client.find_member(policy.match_on, _guard_value(change, policy, values))
    if found is None:
        if policy.import_type == "update_only":
            return MemberAck(key, "import_type", checked=True)
        return None
    if change.planned == "create" and policy.import_type == "create_only":
        return MemberAck(key, "import_type", checked=True)
    if found.status == "unsubscribed" and not _may_reactivate(change, found, policy):
        return MemberAck(key, "unsubscribed", member_id=found.member_id, remote=found, checked=True)
    return None


def _may_reactivate(change: MemberChange, found: RemoteMember, policy: WritePolicy) -> bool:
    """The `reimport_unsubscribed` rule on the list's state of this moment: only a source
    record changed after the unsubscribe brings the member back."""
    if not policy.reimport_unsubscribed or policy.import_type == "create_only":
        return False
    if found.unsubscribed_at is None or change.modified is None:
        return False
    return as_utc(change.modified) > as_utc(found.unsubscribed_at)


def _absent(value: Any) -> bool:
    return value is None or value != value or (isinstance(value, str) and value == "")


def wire_fields(
    values: Mapping[str, Any], fields: Mapping[str, ListField]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Canonical values in the list's wire format, and the fields dropped as (field, reason).

    A value the list cannot take (a choice that maps to no option) costs only that field: the
    member is sent without it and the drop is reported in quarantine.
    """
    out: dict[str, Any] = {}
    dropped: list[tuple[str, str]] = []
    for name, value in values.items():
        if _absent(value):
            continue
        spec = fields.get(name) or ListField(name, "text")
        if spec.format == "choice":
            try:
                value = choice_option_id(name, spec, value)
            except ValueError as exc:
                dropped.append((name, str(exc)))
                continue
        elif name == "mobile":
            value = str(value).lstrip("+")  # HL-A8: digits only
        elif spec.format == "number":
            value = str(value).split(".")[0]
        elif isinstance(value, datetime):
            value = as_utc(value).strftime(WIRE_DATETIME)
        elif isinstance(value, date):
            value = value.isoformat()
        out[name] = value
    return out, dropped


def choice_option_id(name: str, spec: ListField, value: Any) -> str:
    """The option id to send for a choice field.

    A mapped value that is an option id is sent as it is: that is what Heyloyalty documents (for
    `sex`, 1 = male and 2 = female), while labels differ per list and language. A value that is
    not an id is looked up among the labels, case-insensitively, for custom choice fields whose
    ids the user does not know.
    """
    text = str(value).strip()
    if text in spec.options:
        return text
    ids = [k for k, label in spec.options.items() if label.strip().lower() == text.lower()]
    if not ids:
        known = ", ".join(f"{k}={v}" for k, v in spec.options.items())
        raise ValueError(f"{name}: {text!r} is neither an option id nor a label ({known})")
    return ids[0]
