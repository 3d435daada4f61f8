"""One finding about a definition: a stable code, a JSON pointer, what is wrong and how to fix it.

Loading (``interpreter.loader``) and validation (``interpreter.validate``) report ``Problem`` values
rather than stopping at the first one. ``CODES`` lists every code with a one-line meaning; codes are
stable (tests, the CLI's JSON output and editors key on them), messages may improve.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from interpreter.limits import MAX_HINT_LENGTH

__all__ = [
    "CODES",
    "HINT_BUDGET",
    "Hints",
    "Problem",
    "Severity",
    "did_you_mean",
    "listed",
    "pointer",
]

# How many names a message lists, and how much of each: messages stay short whatever the document.
_LISTED_NAMES = 25
_LISTED_LENGTH = 60

#: Work "did you mean" may do for one document: characters of the word times characters of each
#: candidate compared, summed (about 0.1 us each at worst: a quarter of a second in all).
HINT_BUDGET: Final = 2_000_000

Severity = Literal["error", "warning"]

#: Every code a Problem can carry, with what it means.
CODES: dict[str, str] = {
    # document and shape (loader)
    "document-too-large": "the document is larger than MAX_DOCUMENT_BYTES",
    "too-deep": "JSON containers are nested deeper than MAX_DEPTH",
    "too-many-states": "more than MAX_STATES states, branches included",
    "unreadable-file": "the file could not be read (CLI only)",
    "invalid-json": "the document is not JSON (or not UTF-8)",
    "invalid-number": "a number beyond the range of a double (1e400): not finite",
    "invalid-string": "a string or member name with a lone surrogate: not Unicode text",
    "duplicate-key": "an object names the same member twice",
    "missing-field": "a required member is absent",
    "unknown-field": "a member the language does not define",
    "unknown-state-type": "a state's type is not one of the state types",
    "unknown-operator": "a condition's op is not one of the operators",
    "invalid-value": "a member has the wrong type or is out of range",
    "too-many-problems": "more than MAX_SHAPE_PROBLEMS shape problems: the rest are not listed",
    # transitions and graph (validate)
    "unknown-target": "startAt, next, default, timeoutNext or a catch names no state in its scope",
    "empty-states": "a workflow or branch has no states",
    "next-and-end": "a state has both next and end: true",
    "missing-next": "a state has neither next nor end: true",
    "unreachable-state": "no path from startAt reaches the state",
    "no-terminal-path": "states that can never reach a terminal state",
    "infinite-loop": "a cycle with no wait state and no edge leaving it",
    "too-deeply-nested": "parallel/map branches nested deeper than MAX_BRANCH_NESTING",
    "state-name-collision": "one name used by several states where the name alone must be unique",
    # contents (validate)
    "unknown-activity": "a task or compensation names an activity the registry does not have",
    "invalid-jsonpath": "a JSONPath expression that does not compile",
    "expression-too-long": "an expression longer than MAX_EXPRESSION_LENGTH",
    "too-many-paths": "more than MAX_PARSED_PATHS paths beyond plain names and indices",
    "too-many-regexes": "more than MAX_REGEXES different regular expressions",
    "invalid-result-path": "a resultPath/errorPath that is not an assignable $.state path",
    "invalid-template": "a malformed $literal or $path object in an input/output template",
    "invalid-regex": "a matches pattern that does not compile or is too costly",
    "invalid-condition": "a condition the condition compiler refuses",
    "invalid-operand": "a comparison value of the wrong kind for its operator",
    "invalid-duration": "a wait duration that is not ISO 8601 or is over MAX_WAIT_SECONDS",
    "invalid-timestamp": "a wait timestamp neither RFC 3339 nor a JSONPath, or out of range",
    "invalid-input-schema": "the definition's input is not a valid JSON Schema",
    "empty-wait": "a wait with nothing to wait for",
    "ambiguous-wait": "a wait with more than one of seconds, duration, timestamp, event",
    "unknown-compensation-state": "a compensation state names a state that does not exist",
    "concurrent-waits": "waits in several parallel branches, or in a map running items at once",
    # a run's input (interpreter.run_input; pointers into the run's input, not the definition)
    "invalid-run-input": "a run's input does not satisfy the definition's input schema",
    # warnings
    "wait-without-timeout": "an event wait with no timeout may wait forever",
    "timeout-next-without-timeout": "timeoutNext is never taken without timeoutSeconds",
    "choice-without-default": "no default: a run fails when no choice matches",
    "unused-compensation": "a compensate spec that nothing will ever run",
    "nothing-to-compensate": "a compensation state names a state that has no compensate spec",
    "unreachable-catch": "a catch rule after a catch-all '*' rule is never used",
    "max-interval-below-interval": "a retry's maxIntervalSeconds is lower than its intervalSeconds",
    "retry-on-and-do-not-retry-on": "a retryOn name that doNotRetryOn also matches",
    "branch-compensation-scope": "compensations inside a branch are undone only within it",
}


@dataclass(frozen=True, slots=True)
class Problem:
    """A finding. ``pointer`` is an RFC 6901 JSON pointer into the document ("" is the root)."""

    code: str
    pointer: str
    message: str
    severity: Severity = "error"
    hint: str | None = None

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    def to_dict(self) -> dict[str, str | None]:
        return {
            "code": self.code,
            "pointer": self.pointer,
            "message": self.message,
            "severity": self.severity,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        hint = f" ({self.hint})" if self.hint else ""
        return f"{self.pointer or '/'}: {self.severity} {self.code}: {self.message}{hint}"


def pointer(*parts: str | int) -> str:
    """Build a JSON pointer from raw member names and indices, escaping ``~`` and ``/``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def listed(names: Iterable[str]) -> str:
    """``names`` joined for a message: at most 25, each cut at 60 characters, then how many more."""
    unique = list(dict.fromkeys(names))
    shown = [n if len(n) <= _LISTED_LENGTH else n[: _LISTED_LENGTH - 3] + "..." for n in unique]
    more = len(shown) - _LISTED_NAMES
    text = ", ".join(shown[:_LISTED_NAMES])
    return text + (f" and {more} more" if more > 0 else "")


class Hints:
    """Hints ("did you mean ...?") for one document, within a budget of work.

    ``difflib`` compares a word with a candidate in time proportional to the product of their
    lengths (worse on repetitive text), so each comparison is charged that product and the hints
    stop when ``budget`` is spent: a document with thousands of typos still validates quickly, its
    first problems with hints and the rest without. Only names up to ``MAX_HINT_LENGTH`` characters
    are compared: a typo in a longer name is better found by reading the list of names.
    """

    def __init__(self, budget: int = HINT_BUDGET) -> None:
        self.left = budget

    def __call__(self, word: str, candidates: Iterable[str]) -> str | None:
        if len(word) > MAX_HINT_LENGTH or self.left <= 0:
            return None
        # A candidate over 7/3 of the word's length can never reach the 0.6 cutoff (difflib's own
        # real_quick_ratio bound): dropping those first keeps every comparison short.
        near = sorted({c for c in candidates if 3 * len(c) <= 7 * len(word)})
        cost = len(word) * sum(len(c) for c in near)
        if cost > self.left:
            self.left = 0  # spent: later problems get no hint rather than a scan of candidates
            return None
        self.left -= cost
        matches = difflib.get_close_matches(word, near, n=3, cutoff=0.6)
        if not matches:
            return None
        return "did you mean " + " or ".join(repr(m) for m in matches) + "?"


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A "did you mean ...?" hint naming the closest candidates, or None when none is close.

    One hint on its own budget; a validation shares one ``Hints`` across all of its problems."""
    return Hints()(word, candidates)
