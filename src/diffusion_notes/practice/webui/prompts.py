"""The web UI's prompt syntax: emphasis, prompt editing, alternation and `AND`.

Three readings of one prompt, in the order the web UI applies them:

    "a [red:blue:0.5] (circle:1.3) AND a star :0.5"
      1. AND          -> ["a [red:blue:0.5] (circle:1.3)", 1.0], ["a star", 0.5]   (composition)
      2. editing      -> up to step n/2: "a red (circle:1.3)", then "a blue (circle:1.3)"
      3. emphasis     -> [["a red ", 1.0], ["circle", 1.3]]                     (token weights)

`parse_prompt_attention` has the web UI's name and returns what its parser returns: `(text)`
multiplies the weight by 1.1, `[text]` divides it by 1.1, `(text:w)` sets a factor w, brackets nest
(their factors multiply), `\\(` and friends are literal, and a bracket left open applies to the end.

Prompt editing (`prompt_schedule`, the web UI's `get_learned_conditioning_prompt_schedules`):
`[from:to:when]` draws `from` up to step `when` and `to` after it, `[to:when]` adds `to` after step
`when`, `[from::when]` removes `from`, and `[a|b|c]` alternates a, b, c, a, ... step by step. A `when`
written with a decimal point is a fraction of the steps (`0.5`, `1.0`), one without is a step
(`5`); the old rule ("Use old prompt editing timelines") reads any `when` below 1 as a fraction. A
prompt the editing grammar cannot read (a `|` outside `[...]`, a lone `\\` at the end) is used as
it is, as the web UI does.

Both readings take time linear in the prompt's length for brackets nested at most `MAX_NESTING`
deep; a prompt nested deeper is a ValueError.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple

MAX_EMPHASIS = 10.0  # a factor outside [-10, 10] is certainly a typo (the web UI takes anything)
MAX_NESTING = 100  # brackets open at once; the web UI sets no limit, but 1.1 ** 100 is already 13780
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


def _too_deep(depth: int, text: str) -> ValueError:
    return ValueError(f"brackets nested {depth} deep in a prompt of {len(text)} characters; at most "
                      f"{MAX_NESTING} brackets may be open at once")


def parse_prompt_attention(text: str) -> list[list]:
    """[[text, weight], ...]: the prompt cut where its emphasis changes, as the web UI's parser cuts it.

    >>> parse_prompt_attention("an (important) word")
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]

    `BREAK` (upper case, a word of its own) gives ["BREAK", -1]: start a new 75-token chunk. A
    factor that is not a number (`(word:1.2.3)`) or lies outside [-10, 10] is a ValueError, and so
    are brackets open more than `MAX_NESTING` deep. Each bracket multiplies the pieces it holds when
    it closes (open ones at the end), so the weights are the web UI's floats to the last bit.
    """
    if not isinstance(text, str):
        raise ValueError(f"a prompt must be a string, got {type(text).__name__}")
    res: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []
    fresh = True  # no piece since the last bracket: a new piece cannot join the one before

    def multiply(start: int, factor: float) -> None:
        for piece in res[start:]:
            piece[1] *= factor

    def add(piece: str, weight: float) -> None:
        nonlocal fresh
        if not fresh and weight == 1.0 and res[-1][1] == 1.0:  # same brackets around both: same weight
            res[-1][0] += piece
        else:
            res.append([piece, weight])
        fresh = weight == -1

    for m in _ATTENTION.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            add(token[1:], 1.0)
        elif token in "([":
            (round_open if token == "(" else square_open).append(len(res))
            fresh = True
            if len(round_open) + len(square_open) > MAX_NESTING:
                raise _too_deep(len(round_open) + len(square_open), text)
        elif weight is not None and round_open:
            multiply(round_open.pop(), _factor(weight, text))
            fresh = True
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
            fresh = True
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
            fresh = True
        else:
            for i, part in enumerate(_BREAK.split(token)):
                if i > 0:
                    add("BREAK", -1)
                add(part, 1.0)
    for start in round_open:  # an unbalanced bracket reaches the end of the prompt
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    merged: list[list] = []
    for piece in res or [["", 1.0]]:  # neighbours with one weight become one piece
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


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
#
# The web UI's grammar (a lark grammar in its prompt_parser.py), read by hand:
#   prompt    := (group | plain | whitespace)*         inside brackets: no stray ( ) [ ] : |
#   group     := "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"   (emphasis: kept as text)
#              | "[" [prompt ":"] prompt ":" NUMBER "]"                         (editing)
#              | "[" prompt ("|" prompt)+ "]"                                   (alternation)
#   top level := (prompt | a stray "(", ")", "[", "]" or ":")*
# A bracket that opens no group is a stray character at the top level; where a bracket could be read
# either way, it opens the group (as the web UI's parser resolves it). A "|" outside an alternation,
# or a backslash that escapes nothing, makes the whole prompt unreadable.

_NUMBER = re.compile(r"\s*([+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)\s*")  # lark's SIGNED_NUMBER


class _Scheduled(NamedTuple):
    before: list
    after: list
    when: str  # as written: a decimal point makes it a fraction


class _Alternate(NamedTuple):
    options: list


class _Unreadable(Exception):
    pass


def _escape(s: str, i: int) -> str:
    """The escape at s[i] == '\\' (two characters, kept as written), or _Unreadable."""
    if i + 1 >= len(s) or s[i + 1] == "\n":
        raise _Unreadable
    return s[i:i + 2]


def _group(s: str, j: int, depth: int, memo: dict):
    """(nodes, index after the group) of the group opening at s[j], or None if none opens there.

    Groups are remembered by their start, so every character is read by one group at most:
    the time is linear in len(s).
    """
    if j in memo:
        return memo[j]
    if depth > MAX_NESTING:
        raise _too_deep(depth, s)
    parts, seps, text, i = [[]], [], [], j + 1
    memo[j] = None
    while i < len(s):
        c = s[i]
        if c == "\\":
            text.append(_escape(s, i))
            i += 2
            continue
        if c in "([":
            inner = _group(s, i, depth + 1, memo)
            if inner is None:
                return None
            _flush(parts[-1], text)
            parts[-1].extend(inner[0])
            i = inner[1]
            continue
        if c in ":|":
            _flush(parts[-1], text)
            parts.append([])
            seps.append(c)
        elif c in ")]":
            _flush(parts[-1], text)
            nodes = _close(s[j], c, parts, seps)
            memo[j] = None if nodes is None else (nodes, i + 1)
            return memo[j]
        else:
            text.append(c)
        i += 1
    return None


def _flush(part: list, text: list) -> None:
    if text:
        if part and isinstance(part[-1], str):
            part[-1] += "".join(text)
        else:
            part.append("".join(text))
        text.clear()


def _close(opener: str, closer: str, parts: list, seps: list):
    """The nodes of a group from its parts between separators, or None if they make no group."""
    if opener == "(":
        if closer != ")" or seps not in ([], [":"]):
            return None
        return ["(", *parts[0], *([":", *parts[1]] if seps else []), ")"]
    if closer != "]":
        return None
    if not seps:
        return ["[", *parts[0], "]"]
    if set(seps) == {"|"}:
        return [_Alternate(parts)]
    when = parts[-1]
    if seps in ([":"], [":", ":"]) and len(when) == 1 and isinstance(when[0], str):
        number = _NUMBER.fullmatch(when[0])
        if number:
            return [_Scheduled(parts[0] if len(parts) == 3 else [], parts[-2], number[1])]
    return None


def _parse(s: str) -> list:
    """The top level of a prompt: nodes (str, _Scheduled, _Alternate), or _Unreadable."""
    nodes, text, memo, i = [], [], {}, 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            text.append(_escape(s, i))
            i += 2
            continue
        if c == "|":
            raise _Unreadable
        group = _group(s, i, 1, memo) if c in "([" else None
        if group is None:
            text.append(c)
            i += 1
        else:
            _flush(nodes, text)
            nodes.extend(group[0])
            i = group[1]
    _flush(nodes, text)
    return nodes


def _when(node: _Scheduled, steps: int, hires_steps: int | None, old: bool) -> int:
    """The last step of `before`, as the web UI's CollectSteps computes it (it may be < 1: never)."""
    v = float(node.when)
    if old:
        v = v * steps if v < 1 else v
    elif "." in node.when:  # a fraction; of the hires pass's steps, counted from 1.0, with hires_steps
        v = (v - (1.0 if hires_steps is not None else 0.0)) * (steps if hires_steps is None else hires_steps)
    else:
        v = v - (steps if hires_steps is not None else 0)
    return min(steps if hires_steps is None else hires_steps, int(v))


def _switches(nodes: list, total: int, whens: dict, when) -> set[int]:
    """Every step where some text may change: each `when` in 1..total, and every step if any [a|b]."""
    out = set()
    for node in nodes:
        if isinstance(node, _Scheduled):
            whens[id(node)] = when(node)
            if whens[id(node)] >= 1:
                out.add(whens[id(node)])
            out |= _switches(node.before, total, whens, when) | _switches(node.after, total, whens, when)
        elif isinstance(node, _Alternate):
            out.update(range(1, total + 1))
            for option in node.options:
                out |= _switches(option, total, whens, when)
    return out


def _text_at(nodes: list, step: int, whens: dict, out: list) -> None:
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            _text_at(node.before if step <= whens[id(node)] else node.after, step, whens, out)
        else:
            _text_at(node.options[(step - 1) % len(node.options)], step, whens, out)


def prompt_schedule(prompt: str, steps: int, hires_steps: int | None = None,
                    old: bool = False) -> list[tuple[int, str]]:
    """[(end_at_step, text), ...]: the web UI's `get_learned_conditioning_prompt_schedules` of one prompt.

    >>> prompt_schedule("a [red:blue:2] circle", 4)
    [(2, 'a red circle'), (4, 'a blue circle')]

    An entry holds while the denoiser's step counter, which starts at 0, is <= its end_at_step:
    above, "a red circle" is drawn at counts 0, 1 and 2. `steps` is the count the schedule runs
    over (the web UI doubles it for samplers that call the model twice a step). With `hires_steps`
    (the hires pass) a step number counts on from `steps` and a fraction from 1.0, unless `old`:
    the "old prompt editing timelines", where any `when` below 1 is a fraction.
    """
    for name, value in (("steps", steps), ("hires_steps", hires_steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}")
    hires = None if old else hires_steps
    total = steps if hires is None else hires
    try:
        nodes = _parse(prompt)
    except _Unreadable:
        return [(total, prompt)]
    whens: dict[int, int] = {}
    ends = _switches(nodes, total, whens, lambda node: _when(node, steps, hires, old)) | {total}
    schedule = []
    for end in sorted(ends):
        out: list[str] = []
        _text_at(nodes, end, whens, out)
        schedule.append((end, "".join(out)))
    return schedule


def old_rule_matters(prompts: list[str], steps: int) -> bool:
    """Whether "Use old prompt editing timelines" changes the schedule of any of `prompts`, the web UI's
    test before it writes that option into the infotext."""
    return any(prompt_schedule(text, steps) != prompt_schedule(text, steps, old=True) for text in set(prompts))


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text of a `prompt_schedule` at the denoiser's step count `step` (0 first), as the web UI's
    `reconstruct_cond_batch` picks it: the first entry with step <= end_at_step, else the first."""
    for end, text in schedule:
        if step <= end:
            return text
    return schedule[0][1]


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
