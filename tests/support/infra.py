"""Reads infra/main.bicep as text: its parameters, variables and the processes it deploys.

Not a Bicep compiler: it understands the shapes main.bicep keeps to (one declaration per line,
arrays of ``{ name: ... value|secretRef: ... }`` objects, a module per process with ``command``,
``env`` and ``secretNames``), which is what the drift and image tests need. A shape it does not
understand raises, so a change to main.bicep cannot make a test pass by being unreadable.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"
MAIN = INFRA / "main.bicep"

__all__ = [
    "INFRA",
    "MAIN",
    "REPO_ROOT",
    "Bicep",
    "EnvEntry",
    "Module",
    "Param",
    "Stage",
    "app_commands",
    "env_pairs",
    "parse_bicep",
    "parse_bicepparam",
    "parse_dockerfile",
]


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    default: str | None
    secure: bool


@dataclass(frozen=True)
class EnvEntry:
    """One environment variable of a process: a value expression or a Key Vault secret name."""

    name: str
    value: str | None
    secret_ref: str | None


@dataclass
class Module:
    """A ``module`` declaration: its symbol, file and raw property lines."""

    symbol: str
    path: str
    body: list[str] = field(default_factory=list)

    def property(self, key: str) -> str | None:
        for line in self.body:
            match = re.match(rf"^    {key}: (.+)$", line)
            if match and match.group(1).strip() not in ("[", "{"):
                return match.group(1).strip()
        return None

    def array(self, key: str) -> list[str]:
        """Items of a multi-line array property (``key: [`` ... ``]``)."""
        for index, line in enumerate(self.body):
            if line == f"    {key}: [":
                items: list[str] = []
                for item in self.body[index + 1 :]:
                    if item == "    ]":
                        return items
                    items.append(item.strip())
                raise ValueError(f"module {self.symbol}: unterminated array {key}")
        raise ValueError(f"module {self.symbol}: no array property {key!r}")


@dataclass
class Bicep:
    params: dict[str, Param]
    variables: dict[str, str]
    arrays: dict[str, list[str]]
    modules: dict[str, Module]
    text: str

    def resolve(self, expression: str) -> str | None:
        """A literal's value, with parameters (their defaults) and variables substituted;
        None where the value exists only at deployment (outputs, properties)."""
        expression = expression.strip()
        literal = re.fullmatch(r"'((?:[^'\\]|\\.)*)'", expression)
        if literal:
            unresolved = False

            def substitute(match: re.Match[str]) -> str:
                nonlocal unresolved
                value = self.resolve(match.group(1))
                if value is None:
                    unresolved = True
                    return ""
                return value

            text = re.sub(r"\$\{([^}]+)\}", substitute, literal.group(1))
            return None if unresolved else text
        call = re.fullmatch(r"string\((\w+)\)", expression)
        if call:
            return self.resolve(call.group(1))
        if re.fullmatch(r"\w+", expression):
            if expression in self.variables:
                return self.resolve(self.variables[expression])
            param = self.params.get(expression)
            if param is not None and param.default is not None:
                return self.resolve(param.default)
        if re.fullmatch(r"-?\d+|true|false|\[\]", expression):
            return expression
        return None

    def env_of(self, module: Module) -> list[EnvEntry]:
        """The ``env`` of a process module, its ``concat(...)`` of env arrays expanded."""
        expression = module.property("env")
        if expression is None:
            raise ValueError(f"module {module.symbol} has no env")
        call = re.fullmatch(r"concat\(([\w, ]+)\)", expression)
        names = [n.strip() for n in call.group(1).split(",")] if call else [expression]
        entries: list[EnvEntry] = []
        for name in names:
            if name not in self.arrays:
                raise ValueError(f"module {module.symbol}: env {name!r} is not an array variable")
            entries.extend(_env_entries(name, self.arrays[name]))
        return entries

    def secret_names(self, module: Module) -> list[str]:
        """What a process may reference: a literal list, or its secretAccess module's list."""
        expression = module.property("secretNames")
        if expression is None:
            return [_unquote(item) for item in module.array("secretNames")]
        match = re.fullmatch(r"(\w+)\.outputs\.secretNames", expression or "")
        if not match:
            raise ValueError(f"module {module.symbol}: secretNames {expression!r} not understood")
        return self.granted_secrets(self.modules[match.group(1)])

    def granted_secrets(self, access: Module) -> list[str]:
        return [_unquote(item) for item in access.array("secretNames")]

    def identity_of(self, module: Module) -> str:
        """The symbol of the identity resource a module runs as or grants to."""
        expression = module.property("identityId") or module.property("principalId") or ""
        match = re.fullmatch(r"(\w+)\.(?:id|properties\.principalId)", expression)
        if not match:
            raise ValueError(f"module {module.symbol}: identity {expression!r} not understood")
        return match.group(1)

    def granted_to(self, identity: str) -> list[str]:
        """Every secret the secretAccess modules grant to an identity."""
        return [
            name
            for module in self.modules.values()
            if module.path == "modules/secretAccess.bicep" and self.identity_of(module) == identity
            for name in self.granted_secrets(module)
        ]

    def processes(self) -> dict[str, Module]:
        """Container Apps and Container Apps Jobs, by module symbol."""
        return {
            symbol: module
            for symbol, module in self.modules.items()
            if module.path in ("modules/containerApp.bicep", "modules/containerJob.bicep")
        }


def _unquote(item: str) -> str:
    match = re.fullmatch(r"'([^']*)'", item)
    if not match:
        raise ValueError(f"expected a string literal, got {item!r}")
    return match.group(1)


def _env_entries(array: str, lines: list[str]) -> list[EnvEntry]:
    entries: list[EnvEntry] = []
    current: dict[str, str] = {}
    for line in lines:
        stripped = line.strip()
        if stripped == "{":
            current = {}
        elif stripped == "}":
            if "name" not in current or ("value" in current) == ("secretRef" in current):
                raise ValueError(f"{array}: an entry needs a name and one of value/secretRef")
            entries.append(
                EnvEntry(
                    _unquote(current["name"]),
                    current.get("value"),
                    _unquote(current["secretRef"]) if "secretRef" in current else None,
                )
            )
        elif stripped.startswith("//") or not stripped:
            continue
        else:
            key, _, value = stripped.partition(": ")
            if key not in ("name", "value", "secretRef"):
                raise ValueError(f"{array}: unexpected line {stripped!r}")
            current[key] = value
    return entries


def parse_bicep(path: Path = MAIN) -> Bicep:
    text = path.read_text()
    lines = text.splitlines()
    params: dict[str, Param] = {}
    variables: dict[str, str] = {}
    arrays: dict[str, list[str]] = {}
    modules: dict[str, Module] = {}
    secure = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("@secure()"):
            secure = True
        elif match := re.match(r"^param (\w+) (\w+)(?: = (.+))?$", line):
            params[match.group(1)] = Param(match.group(1), match.group(2), match.group(3), secure)
            secure = False
        elif match := re.match(r"^var (\w+) = \[$", line):
            end = lines.index("]", index)
            arrays[match.group(1)] = lines[index + 1 : end]
            index = end
        elif match := re.match(r"^var (\w+) = (.+)$", line):
            variables[match.group(1)] = match.group(2)
        elif match := re.match(r"^module (\w+) '([^']+)' = (?:if \(.+\) )?\{$", line):
            end = lines.index("}", index)
            modules[match.group(1)] = Module(match.group(1), match.group(2), lines[index + 1 : end])
            index = end
        elif not line.startswith(("@", " ", "//")) and line.strip():
            secure = False
        index += 1
    return Bicep(params, variables, arrays, modules, text)


def parse_bicepparam(path: Path) -> dict[str, str]:
    """``param name = expression`` lines of a .bicepparam file, and the file it uses."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if match := re.match(r"^using '([^']+)'$", line):
            values["__using__"] = match.group(1)
        elif match := re.match(r"^param (\w+) = (.+)$", line):
            values[match.group(1)] = match.group(2)
    return values


def app_commands(bicep: Bicep) -> dict[str, list[str]]:
    """The command line of every process, parameters resolved to their defaults."""
    commands: dict[str, list[str]] = {}
    for symbol, module in bicep.processes().items():
        words = []
        for item in module.array("command"):
            value = bicep.resolve(item)
            if value is None:
                raise ValueError(f"module {symbol}: command word {item!r} cannot be resolved")
            words.append(value)
        commands[symbol] = words
    return commands


@dataclass
class Stage:
    """One ``FROM`` stage of the Dockerfile: its instructions in order."""

    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> list[str]:
    """Instruction lines with continuations joined and comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    return lines


def parse_dockerfile(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            name = rest.split(" AS ")[-1].strip() if " AS " in rest else str(len(stages))
            stages.append(Stage(name))
        elif stages:
            stages[-1].instructions.append((keyword, rest.strip()))
    return stages


def env_pairs(rest: str) -> dict[str, str]:
    """The ``KEY=value`` pairs of a Dockerfile ``ENV`` instruction."""
    return {key: value for key, value in (word.split("=", 1) for word in shlex.split(rest))}
