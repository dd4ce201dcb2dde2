"""An allow-list of identities, like QEMU's ``authz-list`` object.

Rules are tried in order; the first rule whose pattern matches decides.  A
pattern is either an exact string or a shell glob (``C=UK,CN=qemu*``) matched
case-sensitively over the whole identity.  If nothing matches, the list's
default policy decides, and the default policy is *deny*.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ChannelError

__all__ = ["AuthzDeniedError", "AuthzList", "AuthzRule", "Format", "Policy"]


class AuthzDeniedError(ChannelError):
    """An identity was refused by an :class:`AuthzList`."""


class Policy(enum.Enum):
    """What a rule, or a list for identities no rule matches, decides."""

    ALLOW = "allow"
    DENY = "deny"


class Format(enum.Enum):
    """How a rule's pattern is matched: the exact identity, or a shell glob."""

    EXACT = "exact"
    GLOB = "glob"


@dataclass(frozen=True)
class AuthzRule:
    """One rule: identities matching *match* get *policy*."""

    match: str
    policy: Policy = Policy.ALLOW
    format: Format = Format.GLOB

    def matches(self, identity: str) -> bool:
        if self.format is Format.GLOB:
            return fnmatch.fnmatchcase(identity, self.match)
        return identity == self.match


class AuthzList:
    """An ordered list of :class:`AuthzRule`; unmatched identities get *policy*."""

    __slots__ = ("name", "policy", "rules")

    def __init__(
        self,
        rules: Iterable[AuthzRule | str] = (),
        *,
        policy: Policy = Policy.DENY,
        name: str = "authz",
    ) -> None:
        self.rules = [AuthzRule(r) if isinstance(r, str) else r for r in rules]
        self.policy = policy
        self.name = name

    def is_allowed(self, identity: str) -> bool:
        for rule in self.rules:
            if rule.matches(identity):
                return rule.policy is Policy.ALLOW
        return self.policy is Policy.ALLOW

    def check(self, identity: str) -> None:
        """Raise :class:`~iochannel.crypto.AuthzDeniedError` unless *identity* is allowed."""
        if not self.is_allowed(identity):
            raise AuthzDeniedError(f"{self.name}: access for {identity!r} is denied")
