"""The key formats of docs/CONTRACTS.md: step key, wait key, default idempotency key, paths."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest

from interpreter.keys import (
    COMPENSATE_SUFFIX,
    branch_path,
    compensation_path,
    default_idempotency_key,
    state_path,
    step_key,
    wait_key,
)

HASH = hashlib.sha256(b"a definition").hexdigest()
WAIT_KEY = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")  # lowercase, digits, single inner dashes

# Names that all slug to "wait-for" (case, punctuation, spaces, underscores, a trailing dash).
SLUG_ALIKE = ("Wait For", "wait-for", "WAIT_FOR", "wait.for", "Wait  For", "wait-for-", "Wait/For")
PATHS = (
    "Wait",
    "wait",
    "W",
    "Par/0/Wait",
    "Par/1/Wait",
    "Par@2/0/Wait",
    "Map/10/Wait",
    "Map/1/0/Wait",
    "Outer/0/Inner/1/Wait",
    "Prüfung",
    "Prufung",
    "日本",  # nothing survives the slug
    "!!!",
    "",
    *SLUG_ALIKE,
)


def test_step_key_is_hash_prefix_path_and_visit() -> None:
    assert step_key(HASH, "Create", 1) == f"{HASH[:12]}:Create:1"
    assert step_key(HASH, "Par/0/Ping", 3) == f"{HASH[:12]}:Par/0/Ping:3"
    assert step_key("abc", "A", 1) == "abc:A:1"  # a short hash is used whole


def test_step_key_differs_by_definition_path_and_visit() -> None:
    other = hashlib.sha256(b"another definition").hexdigest()
    keys = {
        step_key(h, p, v)
        for h in (HASH, other)
        for p in ("A", "Par/0/A", "Par@2/0/A")
        for v in (1, 2)
    }
    assert len(keys) == 12


def test_default_idempotency_key_is_run_id_and_step_key() -> None:
    key = step_key(HASH, "Par/0/Ping", 1)
    assert default_idempotency_key("run-7", key) == f"run-7:{HASH[:12]}:Par/0/Ping:1"


def test_paths_through_branches_and_compensations() -> None:
    assert state_path("", "Ping") == "Ping"
    assert state_path("Par/0", "Ping") == "Par/0/Ping"
    assert branch_path("Par", 1, 0) == "Par/0"
    assert branch_path("Par", 2, 3) == "Par@2/3"
    assert branch_path("Outer/1/Map", 1, 4) == "Outer/1/Map/4"
    assert compensation_path("Par/0/Create") == "Par/0/Create" + COMPENSATE_SUFFIX
    assert COMPENSATE_SUFFIX == "#compensate"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("visit", [1, 2, 10, 1_000])
def test_wait_key_uses_only_lowercase_letters_digits_and_dashes(path: str, visit: int) -> None:
    key = wait_key(path, visit)
    assert WAIT_KEY.match(key), key
    assert key.endswith(f"{visit}-" + hashlib.sha256(path.encode()).hexdigest()[:8])


def test_wait_key_is_readable_slug_visit_digest() -> None:
    digest = hashlib.sha256(b"Par/0/WaitForDevice").hexdigest()[:8]
    assert wait_key("Par/0/WaitForDevice", 2) == f"par-0-waitfordevice-2-{digest}"
    assert wait_key("日本", 1) == f"1-{hashlib.sha256('日本'.encode()).hexdigest()[:8]}"


def test_wait_key_is_deterministic() -> None:
    assert [wait_key(p, 3) for p in PATHS] == [wait_key(p, 3) for p in PATHS]
    assert wait_key("Par@2/0/Wait", 1) == wait_key("Par@2/0/Wait", 1)


def test_wait_key_is_distinct_for_distinct_paths_and_visits() -> None:
    pairs = list(itertools.product(PATHS, (1, 2, 3, 12, 21)))
    keys = {wait_key(p, v) for p, v in pairs}
    assert len(keys) == len(pairs)


def test_names_that_slug_alike_still_get_distinct_wait_keys() -> None:
    slugs = {wait_key(name, 1).rsplit("-", 2)[0] for name in SLUG_ALIKE}
    assert slugs == {"wait-for"}  # the readable part is the same ...
    keys = {wait_key(name, 1) for name in SLUG_ALIKE}
    assert len(keys) == len(SLUG_ALIKE)  # ... the sha256 of the path keeps them apart


def test_long_paths_are_cut_but_stay_distinct() -> None:
    stem = "Branch/" * 20
    first, second = wait_key(stem + "A", 1), wait_key(stem + "B", 1)
    assert first != second
    assert len(first) <= 80 + len("-1-") + 8
    assert WAIT_KEY.match(first) and WAIT_KEY.match(second)
