"""Exceptions of the eventing package: one base, subclasses that also inherit the builtin."""

from __future__ import annotations


class EventingError(Exception):
    """Base of every error raised by the eventing package."""


class MalformedEvent(EventingError, ValueError):
    """Input that is not a valid CloudEvent, or not valid for its event type.

    ``field`` names the attribute or part at fault ("specversion", "ce_id", "data.instances", "value",
    "[2].id" inside a batch) so the edge can report it without parsing the message.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def __reduce__(self) -> tuple[type[MalformedEvent], tuple[str, str]]:
        # The default pickles only the formatted message, which __init__ cannot take back.
        return type(self), (self.field, self.problem)
