"""A small in-memory target for delivery's unit tests: it keeps members by id, recognises one by
the value of the integration's match field, and keeps groups. No HTTP: delivery's planning and
bookkeeping are what these tests judge."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

from resources.base import CallCounter, ListField
from resources.target import (
    MemberAck,
    MemberChange,
    TargetCapabilities,
    TargetClient,
    WritePolicy,
)


class FakeTarget(TargetClient):
    vendor: ClassVar[str] = "fake"
    capabilities: ClassVar[TargetCapabilities] = TargetCapabilities(
        match_keys=frozenset({"email", "mobile", "external_id"}), groups=True
    )
    batch_size: ClassVar[int] = 2

    def __init__(self, fields: Sequence[str] = ("mobile", "external_id", "first_name")) -> None:
        self.calls = CallCounter()
        self.fields = {name: ListField(name, "text") for name in fields}
        self.members: dict[str, dict[str, Any]] = {}  # member id -> values and groups
        self.written: list[MemberChange] = []

    @property
    def label(self) -> str:
        return "fake account"

    def check_connection(self) -> None:
        pass

    def target_fields(self) -> dict[str, ListField]:
        return dict(self.fields)

    def write_members(
        self, changes: Sequence[MemberChange], policy: WritePolicy
    ) -> Iterator[MemberAck]:
        for change in changes:
            self.calls.add(change.action)
            self.written.append(change)
            yield self._write(change, policy)

    def _write(self, change: MemberChange, policy: WritePolicy) -> MemberAck:
        if change.action == "remove":
            self.members.pop(str(change.member_id), None)
            return MemberAck(change.match_key, "removed", member_id=change.member_id)
        key = change.values.get(policy.match_on, change.match_key)
        found = next(
            (i for i, m in self.members.items() if m["values"].get(policy.match_on) == key), None
        )
        member_id = found or f"m{len(self.members) + 1}"
        old = self.members.get(member_id, {"values": {}, "groups": ()})
        self.members[member_id] = {
            "values": {**old["values"], **change.values},
            "groups": change.groups if change.groups is not None else old["groups"],
        }
        outcome = "updated" if found else "created"
        return MemberAck(change.match_key, outcome, member_id=member_id)
