"""``--object``: the credentials and authorization objects chardevs refer to, in QEMU's syntax.

:func:`parse_object` checks the text and returns an :class:`ObjectSpec`;
:meth:`ObjectSpec.build` makes the object (loading files), which then goes
into :attr:`ChardevRegistry.objects` under its id:

* ``tls-creds-x509,id=ID,dir=DIR,endpoint=server|client[,verify-peer=on|off]``
  → :class:`~iochannel.crypto.X509Credentials`;
* ``tls-creds-psk,id=ID,dir=DIR,endpoint=…[,username=U]``
  → :class:`~iochannel.crypto.PSKCredentials`;
* ``authz-simple,id=ID,identity=DN`` → an :class:`~iochannel.crypto.AuthzList`
  allowing exactly that identity;
* ``authz-list,id=ID[,policy=allow|deny],rules.N.match=M[,rules.N.policy=allow|deny]``
  ``[,rules.N.format=glob|exact]`` → an :class:`~iochannel.crypto.AuthzList`.

QEMU's keys that this implementation does not honour (``priority``,
``sanity-check``, ``passwordid``, ``loaded``) are refused, not ignored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from .._parsers import keyval
from ..chardev.options import ChardevOptionError
from ..crypto import (
    AuthzList,
    AuthzRule,
    Credentials,
    CredentialsError,
    PSKCredentials,
    X509Credentials,
)
from ..crypto.authz import Format, Policy

__all__ = ["OBJECT_TYPES", "QOM_TYPES", "ObjectError", "ObjectSpec", "parse_object"]


class ObjectError(ChardevOptionError):
    """An invalid ``--object``; the message names the key."""


_ON_OFF = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}

#: Keys of each type: required or not.
OBJECT_TYPES: dict[str, dict[str, bool]] = {
    "tls-creds-x509": {"dir": True, "endpoint": False, "verify-peer": False},
    "tls-creds-psk": {"dir": True, "endpoint": False, "username": False},
    "authz-simple": {"identity": True},
    "authz-list": {"policy": False, "rules": False},
}
#: Every ``--object`` type the daemon takes (``iothread`` goes to the storage layer).
QOM_TYPES = ("iothread", *OBJECT_TYPES)


@dataclasses.dataclass(frozen=True)
class ObjectSpec:
    type: str
    id: str
    #: The keys given (``rules`` nested as ``{"0": {"match": …}}``).
    props: Mapping[str, Any]

    def describe(self) -> str:
        props = ",".join(f"{k}={v}" for k, v in _flat(self.props))
        return f"{self.type} {props}"

    def build(self) -> object:
        """The object; file problems raise :class:`ObjectError` naming the object."""
        p = self.props
        try:
            if self.type == "tls-creds-x509":
                return X509Credentials(
                    p["dir"], p.get("endpoint", "client"), verify_peer=p.get("verify-peer", True)
                )
            if self.type == "tls-creds-psk":
                return PSKCredentials(
                    p["dir"], p.get("endpoint", "client"), username=p.get("username")
                )
        except CredentialsError as exc:
            raise ObjectError(f"object '{self.id}': {exc}") from None
        if self.type == "authz-simple":
            rule = AuthzRule(p["identity"], Policy.ALLOW, Format.EXACT)
            return AuthzList([rule], policy=Policy.DENY, name=self.id)
        rules = [_rule(p["rules"][k], k) for k in sorted(p.get("rules", {}), key=int)]
        return AuthzList(rules, policy=Policy(p.get("policy", "deny")), name=self.id)

    def unloaded(self) -> object:
        """The object as a check sees it: credentials of their kind, their files not read."""
        if self.type.startswith("tls-creds"):
            verify = self.type == "tls-creds-x509" and self.props.get("verify-peer", True)
            return _Unloaded(self.props.get("endpoint", "client"), verify)
        return self.build()


class _Unloaded(Credentials):
    """Credentials whose files were not read: their endpoint and peer checking only."""

    __slots__ = ("_verifies",)

    def __init__(self, endpoint: str, verifies_peer: bool) -> None:
        super().__init__(endpoint)
        self._verifies = verifies_peer

    @property
    def verifies_peer(self) -> bool:
        return self._verifies


def _flat(props: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in props.items():
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}.")
        else:
            out.append((f"{prefix}{k}", "on" if v is True else "off" if v is False else v))
    return out


def _choice(key: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ObjectError(f"Parameter '{key}' expects one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _rule(rule: object, index: str) -> AuthzRule:
    key = f"rules.{index}"
    if not isinstance(rule, dict) or "match" not in rule:
        raise ObjectError(f"Parameter '{key}.match' is missing")
    extra = sorted(set(rule) - {"match", "policy", "format"})
    if extra:
        raise ObjectError(f"Invalid parameter '{key}.{extra[0]}'")
    policy = _choice(f"{key}.policy", rule.get("policy", "allow"), ("allow", "deny"))
    fmt = _choice(f"{key}.format", rule.get("format", "glob"), ("glob", "exact"))
    return AuthzRule(rule["match"], Policy(policy), Format(fmt))


def parse_object(text: str) -> ObjectSpec:
    """Check ``--object`` text (see the module docstring); files are not read yet."""
    tree = keyval.to_tree(keyval.split(text, implied="qom-type", short_booleans=False))
    kind = tree.pop("qom-type", None)
    if kind is None:
        raise ObjectError("Parameter 'qom-type' is missing")
    if kind not in OBJECT_TYPES:
        raise ObjectError(
            f"Invalid object type '{kind}' (supported: {', '.join(QOM_TYPES)})"
            + keyval.did_you_mean(kind, QOM_TYPES)
        )
    id = tree.pop("id", None)
    if not isinstance(id, str) or not id:
        raise ObjectError("Parameter 'id' is missing")
    keys = OBJECT_TYPES[kind]
    for key in tree:
        if key not in keys:
            raise ObjectError(
                f"Invalid parameter '{key}' for {kind}" + keyval.did_you_mean(key, keys)
            )
    for key, required in keys.items():
        if required and key not in tree:
            raise ObjectError(f"Parameter '{key}' is missing")
    if "endpoint" in tree:
        _choice("endpoint", tree["endpoint"], ("server", "client"))
    for key in ("verify-peer",):
        if key in tree:
            if tree[key] not in _ON_OFF:
                raise ObjectError(f"Parameter '{key}' expects 'on' or 'off', got '{tree[key]}'")
            tree[key] = _ON_OFF[tree[key]]
    if "policy" in tree:
        _choice("policy", tree["policy"], ("allow", "deny"))
    rules = tree.get("rules", {})
    if not isinstance(rules, dict) or not all(k.isdigit() for k in rules):
        raise ObjectError("Parameter 'rules' expects rules.N.match=…")
    for index, rule in rules.items():
        _rule(rule, index)
    return ObjectSpec(kind, id, tree)
