"""Print mixens' exact pins (pyproject.toml: dependencies and the test extra) for one pip command, with the
pins of any requirements files given replacing those of the same packages."""

import re
import sys
import tomllib
from pathlib import Path


def name(requirement: str) -> str:
    return re.split(r"[=<>!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def main(overrides: list[str]) -> None:
    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    pins = {name(r): r for r in [*project["dependencies"], *project["optional-dependencies"]["test"]]}
    for path in overrides:
        for line in Path(path).read_text().splitlines():
            if line := line.split("#", 1)[0].strip():
                pins[name(line)] = line
    print(" ".join(pins.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
