"""Gateway configurations for tests, built as Python dicts and rendered once with PyYAML.

`route()` is one route, `gateway_config()` the whole file around the routes, `render()` its
YAML text. The identities the tests use (the agent's service account, people with groups) and
the masking policy most tests share live here too. Sections may also be given as YAML text
(a policy is easier to read that way); `section()` parses it, so the result is a dict either way.
"""

from __future__ import annotations

import copy
import hashlib
import pathlib

import yaml

# The key the gateway injects upstream (`ROUTE_KEY` in its environment).
ROUTE_KEY = "sk-route-secret-0123456789abcdef"
# The service-account token tests use as the agent's API key, and its group.
AGENT_TOKEN = "agt_test-agent-token-0123456789abcdefghijklmnopq"
AGENT_TOKEN_SHA256 = hashlib.sha256(AGENT_TOKEN.encode()).hexdigest()


def service_account(name: str, token: str, groups: list[str]) -> dict:
    return {"name": name, "token_sha256": hashlib.sha256(token.encode()).hexdigest(), "groups": list(groups)}


def person_token(name: str) -> str:
    return f"agt_person-{name}-0123456789abcdefghijklmnopqrstuv"


# The `identity:` section: the agent's service account, group `agents`.
DEFAULT_IDENTITY: dict = {"service_accounts": [service_account("test-agent", AGENT_TOKEN, ["agents"])]}

# A masking policy `default` that redacts secrets and personal data in both directions (top level).
REDACT_POLICY: dict = {
    "masking": {
        "policies": {
            "default": {
                "request": {"secrets": "redact", "pii": "redact"},
                "response": {"secrets": "redact", "pii": "redact"},
            }
        }
    }
}


def people_identity(people: dict[str, list[str]]) -> dict:
    """DEFAULT_IDENTITY plus one service account per person (token `person_token(name)`), each
    mapped to its person (`person: {subject: name}`) so it may decide approvals."""
    accounts = copy.deepcopy(DEFAULT_IDENTITY["service_accounts"])
    accounts += [{**service_account(name, person_token(name), groups), "person": {"subject": name}}
                 for name, groups in people.items()]
    return {"service_accounts": accounts}


def section(part: dict | str | None) -> dict:
    """A config section as a dict: a dict is copied, YAML text parsed, None is empty."""
    if part is None:
        return {}
    if isinstance(part, str):
        parsed = yaml.safe_load(part)
        if parsed is None:
            return {}
        if not isinstance(parsed, dict):
            raise ValueError(f"not a YAML mapping: {part!r}")
        return parsed
    return copy.deepcopy(part)


def merge(base: dict, patch: dict) -> dict:
    """`patch` merged into a copy of `base`: mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in patch.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else copy.deepcopy(v)
    return out


def route(
    name: str,
    prefix: str,
    url: str,
    ca_file: pathlib.Path | str | None,
    upstream: dict | str | None = None,
    key_header: bool = True,
    access: dict | None = None,
    **fields,
) -> dict:
    """One route: `prefix` -> `url` (trusting `ca_file`), open to group `agents` unless `access`
    says otherwise, injecting ROUTE_KEY unless `key_header` is False. `upstream` adds upstream
    settings (pins_sha256, read_timeout...); other keyword arguments are route fields
    (masking="default", approvals=[...], recording="off"...)."""
    r: dict = {
        "name": name,
        "match": {"path_prefix": prefix},
        "access": copy.deepcopy(access) if access is not None else {"groups": ["agents"]},
        "upstream": {"url": url},
    }
    if ca_file:
        r["upstream"]["ca_file"] = str(ca_file)
    r["upstream"].update(section(upstream))
    if key_header:
        r["credentials"] = {"set_headers": {"Authorization": "Bearer ${env:ROUTE_KEY}"}}
    r.update(copy.deepcopy(fields))
    return r


def masked_chat_routes(mock_port: int, ca_file: pathlib.Path) -> list[dict]:
    """Two routes to the mock: `masked` (/v1/chat/, bodies read whole and masked with the
    `default` policy) and `plain` (the rest of /v1/, streamed through)."""
    url = f"https://127.0.0.1:{mock_port}"
    return [route("masked", "/v1/chat/", url, ca_file, masking="default"), route("plain", "/v1/", url, ca_file)]


def gateway_config(
    port: int,
    admin_port: int,
    routes: list[dict] | dict,
    server: dict | str | None = None,
    identity: dict | str | None = DEFAULT_IDENTITY,
    listener_tls: dict | str | None = None,
    admin: dict | str | None = None,
    extra: dict | str | list | tuple | None = None,
) -> dict:
    """The whole configuration: one TLS agent listener on 127.0.0.1:`port`, the admin listener
    on 127.0.0.1:`admin_port`, `identity` as the identity section, `extra` (one section map or
    several, merged in order: masking policies, guardrails, approvals, recording...) at the top
    level, then the routes. `server`, `listener_tls` and `admin` add to (or override) their
    sections' defaults."""
    config: dict = {
        "server": merge({"state_dir": "./var", "threads": 2, "grace_period": "5s"}, section(server)),
        "listeners": [{"name": "agents", "address": f"127.0.0.1:{port}", "tls": section(listener_tls)}],
        "admin": merge({"address": f"127.0.0.1:{admin_port}"}, section(admin)),
    }
    if identity is not None:
        config["identity"] = section(identity)
    for part in extra if isinstance(extra, (list, tuple)) else [extra]:
        config = merge(config, section(part))
    config["routes"] = copy.deepcopy([routes] if isinstance(routes, dict) else list(routes))
    return config


def render(config: dict) -> str:
    """The YAML text of a configuration (keys in the order they were built)."""
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1 << 16)


def parse(text: str) -> dict:
    return yaml.safe_load(text) or {}


def admin_is_tls(config: dict) -> bool:
    """Whether the admin listener serves TLS: it has a `tls` section."""
    return (config.get("admin") or {}).get("tls") is not None
