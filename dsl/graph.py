"""Drawing a pack's step graph as Mermaid flowchart text (``cortx-workflow graph``).

Each step is a node labelled with its id and type; groups (parallel, loop, condition,
switch branches) are subgraphs; dependencies are arrows from the step depended on. A
condition's branches are drawn as labelled arrows (``then`` / ``else``), a switch's as
``case N`` / ``default``, error handlers as dotted arrows (``fallback``, ``compensate``).
Paste the text into any Mermaid renderer (GitHub and GitLab render it in Markdown).
"""

from __future__ import annotations

from dsl.models import ConditionStep, HttpStep, LoopStep, ParallelStep, Step, SwitchStep, TaskStep, WorkflowPack

__all__ = ["to_mermaid"]

_SHAPES = {
    "service_call": ("[", "]"),
    "http": ("[", "]"),
    "webhook": ("[", "]"),
    "emit": ("[", "]"),
    "task": ("[", "]"),
    "condition": ("{", "}"),
    "switch": ("{", "}"),
    "loop": ("[[", "]]"),
    "parallel": ("[/", "/]"),
}


def _node(step_id: str) -> str:
    # Mermaid ids may not contain '-'; labels keep the real id.
    return "s_" + step_id.replace("-", "_")


def _label(step: Step) -> str:
    detail = step.type
    if isinstance(step, LoopStep):
        detail = f"loop over {step.collection}" if step.collection else f"loop while {step.condition}"
    elif isinstance(step, ConditionStep):
        detail = f"if {step.condition}"
    elif isinstance(step, HttpStep):
        detail = f"{step.method} {_url_label(step.url)}"
    elif isinstance(step, TaskStep):
        detail = f"task {step.function}"
    elif getattr(step, "service", None):
        detail = f"{step.service} {getattr(step, 'endpoint', None) or ''}".strip()
    text = f"{step.id}<br/>{detail}".replace('"', "'")
    return f'"{text}"'


def _url_label(url: str) -> str:
    # Mermaid labels cannot hold '"' and read '{', '}' as shape syntax; keep the URL short.
    text = url if len(url) <= 60 else url[:57] + "..."
    return text.replace("{", "(").replace("}", ")")


def to_mermaid(pack: WorkflowPack) -> str:
    """Mermaid ``flowchart TD`` text of the pack's steps.

    Returns:
        The text, one statement per line, ending with a newline.
    """
    lines = ["flowchart TD", f'  %% {pack.id} {pack.version}']
    _block(pack.steps, lines, "  ")
    if pack.on_error is not None and pack.on_error.compensate:
        lines.append('  subgraph pack_compensate["on run failure: compensate"]')
        _block(pack.on_error.compensate, lines, "    ")
        lines.append("  end")
    return "\n".join(lines) + "\n"


def _block(steps: list[Step], lines: list[str], indent: str) -> None:
    for step in steps:
        opening, closing = _SHAPES[step.type]
        lines.append(f"{indent}{_node(step.id)}{opening}{_label(step)}{closing}")
        if isinstance(step, (LoopStep, ParallelStep)):
            title = "each iteration" if isinstance(step, LoopStep) else "in parallel"
            lines.append(f'{indent}subgraph {_node(step.id)}_body["{step.id}: {title}"]')
            _block(step.steps, lines, indent + "  ")
            lines.append(f"{indent}end")
            lines.append(f"{indent}{_node(step.id)} --> {_node(step.id)}_body")
        elif isinstance(step, (ConditionStep, SwitchStep)):
            for label, branch in _branches(step):
                if not branch:
                    continue
                _block(branch, lines, indent)
                for child in branch:
                    if not child.dependencies:
                        lines.append(f"{indent}{_node(step.id)} -->|{label}| {_node(child.id)}")
        if step.on_error is not None:
            for kind in ("fallback", "compensate"):
                handlers = getattr(step.on_error, kind)
                if handlers:
                    _block(handlers, lines, indent)
                    lines.append(f"{indent}{_node(step.id)} -.->|{kind}| {_node(handlers[0].id)}")
        for dependency in step.dependencies:
            lines.append(f"{indent}{_node(dependency)} --> {_node(step.id)}")


def _branches(step: ConditionStep | SwitchStep) -> list[tuple[str, list[Step]]]:
    if isinstance(step, ConditionStep):
        return [("then", step.then), ("else", step.else_)]
    return [(f"case {i}", case.steps) for i, case in enumerate(step.cases)] + [("default", step.default)]
