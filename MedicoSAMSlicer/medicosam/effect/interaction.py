"""What the effect's tools do with a mouse press in a slice view, decided without Slicer.

The Segment Editor hands view events to the active effect first and keeps from everything else the
presses it takes, so the effect takes a press only when it is its prompt: Slicer's place mode places,
a press on a markup's hovered point or handle drags it (the markups widget needs that press), and a
modified press (Shift, Ctrl, Alt) is Slicer's.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Tool -> (the prompt role it adds to, `links.PROMPT_ROLES`; whether its prompt is positive).
TOOL_PROMPTS: Dict[str, Tuple[str, bool]] = {
    "positive": ("positive", True),
    "negative": ("negative", False),
    "box": ("roi", True),
    "lasso": ("lasso", True),
    "scribble": ("scribble", True),
    "negative_scribble": ("scribble", False),
}
#: Tool -> the same tool with the other polarity ("flip polarity"); a box and a lasso have none.
FLIPPED_TOOLS = {"positive": "negative", "negative": "positive", "scribble": "negative_scribble",
                 "negative_scribble": "scribble"}
#: A drag shorter than this (view pixels) draws no box; a stroke takes a point each time the mouse moved this far.
MIN_BOX_DRAG_PIXELS = 4
STROKE_STEP_PIXELS = 3


def get_press_action(tool: str, place_mode: bool, modified: bool, on_markup: bool, busy: bool) -> str:
    """What a left press does while the effect is active.

    Returns:
        "slicer": leave it to Slicer (place mode, a modifier key, or the mouse over a markup's point or
            handle, which the press drags);
        "wait": take it and do nothing (a blocking action runs);
        "point", "box" or "stroke": the tool's prompt (a click, a box drag, a drawn curve).
    """
    if place_mode or modified or on_markup:
        return "slicer"
    if busy:
        return "wait"
    role = TOOL_PROMPTS[tool][0]
    return {"roi": "box", "lasso": "stroke", "scribble": "stroke"}.get(role, "point")
