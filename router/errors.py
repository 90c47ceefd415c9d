"""Domain exceptions of the request-path library; translated to exit codes or HTTP at the edge."""

from __future__ import annotations


class RouterError(Exception):
    """Base class for every error the router raises on purpose."""


class ConfigError(RouterError):
    """A router config file is missing, unreadable or invalid.

    ``problems`` holds one ``(field path, message)`` pair per problem found, so callers can show
    all of them at once rather than one per run.
    """

    def __init__(self, path: str, problems: list[tuple[str, str]]) -> None:
        self.path = path
        self.problems = problems
        lines = [f"{path}: {field}: {message}" if field else f"{path}: {message}"
                 for field, message in problems]
        super().__init__("\n".join(lines))


class RequestFormatError(RouterError, ValueError):
    """A chat request could not be read (no messages, no user turn, unsupported content)."""
