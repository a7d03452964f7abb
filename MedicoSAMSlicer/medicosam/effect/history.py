"""The prompts added to each segment, newest last: what "Undo prompt" takes back.

Segment Editor undo reverts writes to the segment; prompts live in markups nodes, which any module may
edit, so the effect records each prompt it sees added: a control point added to a + / - list (by a
click, place mode or another module), a box drag that set the ROI (with the ROI as it was), a drawn
stroke. Undo prompt takes back the newest one that still exists (the user may have deleted it since).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Hashable, List, Optional, Tuple

#: Steps kept per segment (the oldest are dropped beyond it).
HISTORY_LIMIT = 200


@dataclasses.dataclass(frozen=True)
class PromptStep:
    """One added prompt.

    Attributes:
        kind: "point" (a control point of a list), "roi" (a box drag set the ROI) or "stroke" (a drawn curve).
        node_id: the markups node's ID.
        point_id: the control point's ID, for "point".
        roi_before: for "roi", the ROI before the drag: (object-to-node matrix as 16 numbers, size), or
            None when it had none (undo empties it).
    """

    kind: str
    node_id: str
    point_id: str = ""
    roi_before: Optional[Tuple[Tuple[float, ...], Tuple[float, float, float]]] = None


class PromptHistory:
    """Per segment (any hashable key), the steps in the order they were added."""

    def __init__(self, limit: int = HISTORY_LIMIT):
        self.limit = limit
        self._steps: Dict[Hashable, List[PromptStep]] = {}

    def push(self, segment: Hashable, step: PromptStep) -> None:
        steps = self._steps.setdefault(segment, [])
        steps.append(step)
        del steps[:-self.limit]

    def pop(self, segment: Hashable, exists: Callable[[PromptStep], bool]) -> Optional[PromptStep]:
        """The newest step whose prompt `exists` still; older ones are kept, newer vanished ones dropped."""
        steps = self._steps.get(segment, [])
        while steps:
            step = steps.pop()
            if exists(step):
                return step
        return None

    def forget(self, segment: Hashable) -> None:
        """Drop a segment's steps (its prompts were all removed)."""
        self._steps.pop(segment, None)
