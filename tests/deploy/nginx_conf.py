"""A small reader for nginx configuration files: enough to check what tests/deploy asserts.

crossplane is not a dependency; the grammar the checks need is small: directives end with `;`,
blocks are `{ ... }`, `#` starts a comment outside quotes, and arguments may be quoted.
`include` is resolved against the repository's deploy/nginx folder (the config refers to
/etc/nginx/..., where those files live in a container).
"""

import re
from dataclasses import dataclass, field
from pathlib import Path

NGINX_ETC = "/etc/nginx/"


@dataclass
class Directive:
    name: str
    args: list[str]
    file: Path
    line: int
    block: list["Directive"] | None = None  # None: a simple directive; a list: a block
    included: list["Directive"] = field(default_factory=list)  # what an `include` brought in

    def children(self, name: str) -> list["Directive"]:
        """Directives of this name directly in this block, includes expanded."""
        return [d for d in effective(self.block or []) if d.name == name]

    def where(self) -> str:
        return f"{self.file.name}:{self.line} ({self.name} {' '.join(self.args)})"


_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<comment>\#[^\n]*)
    | (?P<quoted>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')
    | (?P<punct>[{};])
    | (?P<word>(?:\\.|[^\s{};"'#])(?:\\.|[^\s{};])*)
    """,
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    pos, line = 0, 1
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read nginx config at line {line}: {text[pos : pos + 20]!r}")
        kind, value = match.lastgroup, match.group()
        if kind == "quoted":
            out.append((value[1:-1], line))
        elif kind in ("punct", "word"):
            out.append((value, line))
        line += value.count("\n")
        pos = match.end()
    return out


def parse(path: Path, root: Path) -> list[Directive]:
    """The directives of `path`; includes of /etc/nginx/X are read from `root`/X."""
    tokens = _tokens(path.read_text())
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    start_line = 0
    for token, line in tokens:
        if token == ";":
            if not words:
                raise ValueError(f"{path}:{line}: empty directive")
            directive = Directive(words[0], words[1:], path, start_line)
            if directive.name == "include":
                directive.included = parse(_resolve(directive.args[0], root), root)
            stack[-1].append(directive)
            words = []
        elif token == "{":
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], path, start_line, block))
            stack.append(block)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ValueError(f"{path}:{line}: unexpected '}}'")
            stack.pop()
        else:
            if not words:
                start_line = line
            words.append(token)
    if words or len(stack) != 1:
        raise ValueError(f"{path}: unterminated directive or block")
    return stack[0]


def _resolve(target: str, root: Path) -> Path:
    if not target.startswith(NGINX_ETC):
        raise ValueError(f"include {target}: the config must include by absolute /etc/nginx path")
    return root / target.removeprefix(NGINX_ETC)


def effective(directives: list[Directive]) -> list[Directive]:
    """Directives with every `include` replaced by what it includes (recursively)."""
    out: list[Directive] = []
    for directive in directives:
        out.append(directive)
        if directive.name == "include":
            out.extend(effective(directive.included))
    return out


def walk(directives: list[Directive]) -> list[Directive]:
    """Every directive at any depth, includes expanded."""
    out: list[Directive] = []
    for directive in effective(directives):
        out.append(directive)
        if directive.block is not None:
            out.extend(walk(directive.block))
    return out


_SIZE = re.compile(r"^(\d+)([kKmMgG]?)$")


def size_bytes(value: str) -> int:
    """nginx's size syntax: 512, 64k, 25m, 1g."""
    match = _SIZE.match(value)
    if match is None:
        raise ValueError(f"not an nginx size: {value!r}")
    number, unit = int(match.group(1)), match.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")


def duration_seconds(value: str) -> float:
    """nginx's (and Go's, as compose prints it) durations: 60s, 1h, 6m40s, 500ms, 75."""
    if value.isdigit():
        return float(value)
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        raise ValueError(f"not a duration: {value!r}")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * scale[u] for n, u in parts)
