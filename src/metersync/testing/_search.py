"""Stripe's search query language, the subset customers need.

email:'jenny@example.com'            exact (case-insensitive for email and name)
name~'jen'                           substring
metadata['metersync_key']:'acme'     exact, case-sensitive
created>1700000000                   numeric comparison (>, <, >=, <=, :)
clause AND clause …  |  clause OR clause …   (not both in one query, as on Stripe)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from metersync.testing._errors import invalid

_CLAUSE = re.compile(
    r"""^\s*(?P<neg>-)?
        (?P<field>metadata\[(?P<q1>['"])(?P<mkey>.*?)(?P=q1)\]|[a-z_]+)
        \s*(?P<op>:|~|>=|<=|>|<)\s*
        (?:(?P<q2>['"])(?P<svalue>.*?)(?P=q2)|(?P<nvalue>-?\d+))\s*$""",
    re.VERBOSE,
)
_TEXT_FIELDS = {"email", "name", "phone", "description"}

Predicate = Callable[[dict[str, Any]], bool]


def parse_query(query: str) -> Predicate:
    if not query.strip():
        raise invalid("Query must not be empty.", param="query")
    has_and = re.search(r"\sAND\s", query) is not None
    has_or = re.search(r"\sOR\s", query) is not None
    if has_and and has_or:
        raise invalid("Queries cannot contain both AND and OR.", param="query")
    parts = re.split(r"\s(?:AND|OR)\s", query)
    predicates = [_clause(part) for part in parts]
    if has_or:
        return lambda c: any(p(c) for p in predicates)
    return lambda c: all(p(c) for p in predicates)


def _clause(text: str) -> Predicate:
    found = _CLAUSE.match(text)
    if found is None:
        raise invalid(f"Invalid search query clause: {text.strip()!r}", param="query")
    negate = found.group("neg") is not None
    op = found.group("op")
    value = found.group("svalue") if found.group("q2") else found.group("nvalue")
    if found.group("mkey") is not None:
        key = found.group("mkey")
        if op not in (":", "~"):
            raise invalid("metadata supports only ':' and '~'", param="query")
        predicate = _text_match(lambda c: (c.get("metadata") or {}).get(key), op, value, False)
    elif found.group("field") == "created":
        if found.group("nvalue") is None:
            raise invalid("created must be compared with a number", param="query")
        predicate = _number_match("created", op, int(value))
    elif found.group("field") in _TEXT_FIELDS:
        field = found.group("field")
        if op not in (":", "~"):
            raise invalid(f"{field} supports only ':' and '~'", param="query")
        fold = field in ("email", "name")
        predicate = _text_match(_getter(field), op, value, fold)
    else:
        raise invalid(
            f"Field '{found.group('field')}' is an unsupported search field for customers.",
            param="query",
        )
    return (lambda c: not predicate(c)) if negate else predicate


def _getter(field: str) -> Callable[[dict[str, Any]], Any]:
    return lambda customer: customer.get(field)


def _text_match(get: Callable[[dict[str, Any]], Any], op: str, value: str, fold: bool) -> Predicate:
    wanted = value.lower() if fold else value

    def check(customer: dict[str, Any]) -> bool:
        actual = get(customer)
        if not isinstance(actual, str):
            return False
        actual = actual.lower() if fold else actual
        return actual == wanted if op == ":" else wanted.lower() in actual.lower()

    return check


def _number_match(field: str, op: str, value: int) -> Predicate:
    compare: dict[str, Callable[[int, int], bool]] = {
        ":": lambda a, b: a == b,
        ">": lambda a, b: a > b,
        "<": lambda a, b: a < b,
        ">=": lambda a, b: a >= b,
        "<=": lambda a, b: a <= b,
    }
    return lambda c: compare[op](int(c.get(field, 0)), value)
