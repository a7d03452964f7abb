"""Which markups nodes are a segment's prompts, and how the link is stored in the scene.

Each segment has prompt nodes per role: a + point list, a - point list, an ROI, and any number of
drawn strokes (lassos: closed curves; scribbles: curves). The links are MRML node references on the
segmentation node, one reference role per (role, segment): a scene import that renames clashing node
IDs updates references (never segment tags), Segment Editor undo restores segments but leaves the
segmentation node's references alone, and a deleted node drops out of every reference by itself.

A reference role is written in the scene as `role:id1 id2;` (`vtkMRMLNode::WriteXML`), so the segment
ID, which may hold any character, is percent-encoded into `[A-Za-z0-9_.~-]` and `%`.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple
from urllib.parse import quote

#: The prefix of every reference role the effect writes.
REFERENCE_PREFIX = "MedicoSAM"


@dataclasses.dataclass(frozen=True)
class PromptRole:
    """One kind of prompt node of a segment.

    Attributes:
        node_class: the MRML class of its nodes.
        name: the name of a node the effect creates (+ " <segment name>"). A negative list's name holds
            "negative", so its points stay negative in a saved file (`markups.is_negative_list`).
        label: its row label in the options panel ("" for strokes: drawn, not chosen).
        color: the colour of a node the effect creates.
        strokes: a segment has any number of these (drawn ones), else one, chosen in the panel.
    """

    node_class: str
    name: str
    label: str
    color: Tuple[float, float, float]
    strokes: bool = False


PROMPT_ROLES: Dict[str, PromptRole] = {
    "positive": PromptRole("vtkMRMLMarkupsFiducialNode", "MedicoSAM positive", "+ points:", (0.2, 0.9, 0.2)),
    "negative": PromptRole("vtkMRMLMarkupsFiducialNode", "MedicoSAM negative", "- points:", (1.0, 0.25, 0.25)),
    "roi": PromptRole("vtkMRMLMarkupsROINode", "MedicoSAM ROI", "ROI:", (1.0, 0.85, 0.1)),
    "lasso": PromptRole("vtkMRMLMarkupsClosedCurveNode", "MedicoSAM lasso", "", (0.2, 0.9, 0.2), strokes=True),
    "scribble": PromptRole("vtkMRMLMarkupsCurveNode", "MedicoSAM scribble", "", (0.2, 0.9, 0.2), strokes=True),
}
#: The name and colour of a scribble drawn with the negative polarity.
NEGATIVE_SCRIBBLE = ("MedicoSAM negative scribble", (1.0, 0.25, 0.25))
#: The roles chosen in the panel, one node each.
CHOSEN_ROLES = tuple(role for role, spec in PROMPT_ROLES.items() if not spec.strokes)


def get_reference_role(role: str, segment_id: str) -> str:
    """The node reference role, on the segmentation node, of a segment's prompt nodes of `role`."""
    if role not in PROMPT_ROLES:
        raise ValueError(f"unknown prompt role {role!r}")
    return f"{REFERENCE_PREFIX}/{role}/{quote(segment_id, safe='')}"
