"""`{step.output}` references: a pipeline step names an earlier step's output (`"{rl_data.train}"`) in its
overrides and in a build-data step's arguments; they are filled in once that step has run."""

from __future__ import annotations

import re
from typing import Any

from mmrl.errors import UserError

# "{step.output}": an earlier step's output path, in step overrides and build-data argv (e.g. "{rl_data.train}").
_REF = re.compile(r"\{([A-Za-z0-9_.-]+)\.([A-Za-z0-9_-]+)\}")


def resolve_refs(
    value: Any, outputs: dict[str, dict[str, Any]] | None, where: str, steps: set[str] | frozenset[str] = frozenset()
) -> Any:
    """`value` with every "{step.output}" replaced by that earlier step's output; None `outputs`: left as written.

    Braces that name no step of the pipeline (`steps`, plus the earlier ones) stay as they are (LaTeX `{1.5}`).
    """
    if outputs is None:
        return value
    if isinstance(value, list):
        return [resolve_refs(v, outputs, where, steps) for v in value]
    if isinstance(value, dict):
        return {k: resolve_refs(v, outputs, where, steps) for k, v in value.items()}
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        step, key = match.group(1), match.group(2)
        if step not in outputs and step not in steps:
            return match.group(0)
        if key not in outputs.get(step, {}):
            known = sorted(f"{s}.{k}" for s, o in outputs.items() for k in o)
            raise UserError(f"{where}: '{{{step}.{key}}}' is no output of an earlier step; known: {known}")
        return str(outputs[step][key])

    return _REF.sub(one, value)
