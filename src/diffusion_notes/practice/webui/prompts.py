"""The web UI's prompt syntax: emphasis, prompt editing, alternation and `AND`.

Three readings of one prompt, in the order the web UI applies them:

    "a [red:blue:0.5] (circle:1.3) AND a star :0.5"
      1. AND          -> ["a [red:blue:0.5] (circle:1.3)", 1.0], ["a star", 0.5]   (composition)
      2. editing      -> steps 1..n/2: "a red (circle:1.3)", then "a blue (circle:1.3)"
      3. emphasis     -> [["a red ", 1.0], ["circle", 1.3]]                     (token weights)

`parse_prompt_attention` has the web UI's name and returns what its parser returns: `(text)`
multiplies the weight by 1.1, `[text]` divides it by 1.1, `(text:w)` sets a factor w, brackets nest
(their factors multiply), `\\(` and friends are literal, and a bracket left open applies to the end.
Prompt editing: `[from:to:when]` draws `from` up to step `when` and `to` after it (`when` < 1 is a
fraction of the steps), `[to:when]` adds `to` after step `when`, `[from::when]` removes `from`, and
`[a|b|c]` alternates a, b, c, a, ... step by step. A prompt the editing grammar cannot read is used
as it is, as the web UI does.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

MAX_EMPHASIS = 10.0  # a factor outside [-10, 10] is certainly a typo (the web UI takes anything)
ROUND, SQUARE = 1.1, 1 / 1.1

_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\\]|\\\\|\\|   # escapes: \( \) \[ \] \\ and a lone backslash
\(|\[|                         # openers
:\s*([+-]?[.\d]+)\s*\)|        # (text:1.2): the factor and the closing bracket
\)|]|                          # closers
[^\\()\[\]:]+|                 # plain text
:                              # a colon that closes no weight
""", re.X)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def parse_prompt_attention(text: str) -> list[list]:
    """[[text, weight], ...]: the prompt cut where its emphasis changes, as the web UI's parser cuts it.

    >>> parse_prompt_attention("an (important) word")
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]

    `BREAK` (upper case, a word of its own) gives ["BREAK", -1]: start a new 75-token chunk. A
    factor that is not a number (`(word:1.2.3)`) or lies outside [-10, 10] is a ValueError.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for piece in res[start:]:
            piece[1] *= factor

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            res.append([token[1:] or "\\", 1.0])
        elif token == "(":
            round_open.append(len(res))
        elif token == "[":
            square_open.append(len(res))
        elif weight is not None and round_open:
            multiply(round_open.pop(), _factor(weight, text))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])
    for start in round_open:  # an unbalanced bracket reaches the end of the prompt
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    res = [piece for piece in res if piece[0] or piece[1] == -1]
    merged: list[list] = []
    for piece in res:  # neighbours with one weight become one piece
        if merged and merged[-1][1] == piece[1] and piece[1] != -1:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged or [["", 1.0]]


def _factor(weight: str, text: str) -> float:
    try:
        value = float(weight)
    except ValueError:
        raise ValueError(f"malformed emphasis in {text!r}: {weight!r} is not a number; write it as "
                         "(word:1.2)") from None
    if not math.isfinite(value) or abs(value) > MAX_EMPHASIS:
        raise ValueError(f"emphasis factor {value:g} in {text!r} is outside [-{MAX_EMPHASIS:g}, "
                         f"{MAX_EMPHASIS:g}]; the web UI's useful range is about 0.5 to 1.5")
    return value


# ---------------------------------------------------------------------------
# Prompt editing: [from:to:when] and [a|b], read into a tree, then written out per step.


class _Scheduled(NamedTuple):
    before: list
    after: list
    when: float


class _Alternate(NamedTuple):
    options: list


def _parse(s: str, i: int, stops: str) -> tuple[list, int]:
    """Nodes (str, _Scheduled, _Alternate) of s from i up to one of `stops` (not consumed)."""
    nodes, text = [], ""
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            text, i = text + s[i:i + 2], i + 2
        elif c in stops:
            break
        elif c == "[":
            node, j = _bracket(s, i)
            if node is None:
                text, i = text + c, i + 1
            else:
                nodes, text, i = nodes + ([text] if text else []) + [node], "", j
        elif c == "(":  # emphasis: its ':' and '|' belong to it; editing may sit inside
            inner, j = _parse(s, i + 1, ")")
            close = ")" if j < len(s) else ""
            nodes, text, i = nodes + ([text] if text else []) + ["("] + inner + [close], "", j + 1
        else:
            text, i = text + c, i + 1
    return nodes + ([text] if text else []), i


def _bracket(s: str, i: int):
    """A _Scheduled or _Alternate starting at s[i] == '[' and the index after its ']', or (None, i)."""
    parts, seps, j = [], [], i + 1
    while True:
        nodes, j = _parse(s, j, ":|]")
        parts.append(nodes)
        if j >= len(s):
            return None, i
        sep, j = s[j], j + 1
        if sep == "]":
            break
        seps.append(sep)
    if len(parts) >= 2 and set(seps) == {"|"}:
        return _Alternate(parts), j
    if seps in ([":"], [":", ":"]):
        when = parts[-1]
        if len(when) == 1 and isinstance(when[0], str) and re.fullmatch(r"\s*[+-]?(\d+\.?\d*|\.\d+)\s*", when[0]):
            before = parts[0] if len(parts) == 3 else []
            return _Scheduled(before, parts[-2], float(when[0])), j
    return None, i


def _text_at(nodes: list, step: int, steps: int) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            limit = node.when * steps if node.when < 1 else node.when
            out.append(_text_at(node.before if step <= limit else node.after, step, steps))
        else:
            out.append(_text_at(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def prompt_schedule(prompt: str, steps: int) -> list[tuple[int, str]]:
    """[(last step, text), ...]: the text the sampler's steps 1..steps are conditioned on.

    >>> prompt_schedule("a [red:blue:2] circle", 4)
    [(2, 'a red circle'), (4, 'a blue circle')]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    nodes, end = _parse(prompt, 0, "")
    schedule: list[tuple[int, str]] = []
    for step in range(1, steps + 1):
        text = _text_at(nodes, step, steps)
        if schedule and schedule[-1][1] == text:
            schedule[-1] = (step, text)
        else:
            schedule.append((step, text))
    return schedule


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of a `prompt_schedule` at the 1-based step `step` (the last text past the end)."""
    for last, text in schedule:
        if step <= last:
            return text
    return schedule[-1][1]


# ---------------------------------------------------------------------------
# Composition: "a AND b :0.5" (composable diffusion, Liu et al. 2022).

_AND = re.compile(r"\bAND\b")
_WEIGHT = re.compile(r"^(.*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$", re.S)


def split_and(prompt: str) -> list[tuple[str, float]]:
    """[(sub-prompt, weight), ...] of a prompt joined with AND; a trailing ':w' gives the weight (default 1)."""
    parts = []
    for piece in _AND.split(prompt):
        m = _WEIGHT.match(piece)
        text, weight = m.group(1), m.group(2)
        parts.append((text.strip() if weight is not None else piece.strip(), float(weight) if weight else 1.0))
    return parts
