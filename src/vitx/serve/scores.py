"""The leaderboards of docs/benchmarks.md as data: ``{model: {"command": bench command, "better": {metric: "higher" or
"lower"} (the table's ↑ and ↓), "methods": {method: {metric: value}}}}``, shipped beside this module as scores.json for the page to show each method's scores beside its map.

A leaderboard is a table whose first column is ``method``, read under the last ``vitx bench --model M`` command above
it; a ``###`` heading naming a model in backticks after that command (the same command run for another model) takes
its place, with the method it names in backticks after it first among ``--methods``. Each model keeps its first
leaderboard (the later tables of a model are studies on fewer images or metrics). A cell's value is its mean (the
number before ``±``); ``n/a`` cells are left out. The reference rows keep their names without `` (reference)``.
``python -m vitx.serve.scores [docs/benchmarks.md]`` rewrites scores.json.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

SCORES_FILE = Path(__file__).with_name("scores.json")
COMMAND = re.compile(r"^`?(vitx bench --model (\S+)[^`]*)`?\s*$")
HEADING = re.compile(r"^#{2,}\s.*?`([\w.-]+)`(?:.*?`([\w.-]+)`)?")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse(text: str) -> dict:
    """The leaderboards of a benchmarks page (see the module)."""
    boards: dict = {}
    command = model = None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        found, heading = COMMAND.match(line), HEADING.match(line)
        if found:
            command, model = found[1].strip(), found[2]
        elif heading and command and heading[1] != model and heading[1].startswith("shapes-"):
            command = re.sub(r"--model \S+", f"--model {heading[1]}", command)
            command, model = re.sub(r"--out \S+", f"--out out/bench-{heading[1]}", command), heading[1]
            if heading[2]:   # the heading's method runs where the first command's own method ran
                command = re.sub(r"--methods [\w-]+", f"--methods {heading[2]}", command)
        elif line.startswith("| method |") and model and model not in boards:
            names = [cell(name) for name in row(line)[1:]]
            metrics = [name.rstrip(" ↑↓").strip() for name in names]
            better = {metric: "higher" if name.endswith("↑") else "lower"
                      for metric, name in zip(metrics, names) if name.endswith(("↑", "↓"))}
            rows = {}
            i += 2   # the header's separator line
            while i < len(lines) and lines[i].startswith("|"):
                cells = row(lines[i])
                values = {metric: value(text) for metric, text in zip(metrics, cells[1:])}
                rows[cell(cells[0]).removesuffix(" (reference)")] = {k: v for k, v in values.items() if v is not None}
                i += 1
            boards[model] = {"command": command, "better": better, "methods": rows}
            continue
        i += 1
    return boards


def row(line: str) -> list[str]:
    return [part.strip() for part in line.strip().strip("|").split("|")]


def cell(text: str) -> str:
    return text.replace("**", "").replace("`", "").strip()


def value(text: str) -> float | None:
    number = NUMBER.match(cell(text))
    return float(number[0]) if number else None


def load() -> dict:
    """The shipped leaderboards (scores.json)."""
    return json.loads(SCORES_FILE.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    source = Path(argv[0] if argv else "docs/benchmarks.md")
    boards = parse(source.read_text(encoding="utf-8"))
    SCORES_FILE.write_text(json.dumps(boards, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    shown = ", ".join(f"{model} ({len(board['methods'])} methods)" for model, board in boards.items())
    print(f"wrote {SCORES_FILE}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
