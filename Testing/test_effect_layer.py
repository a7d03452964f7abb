"""The effect's decisions that the Slicer files only carry out, tested without Slicer: what a press does,
the tools' polarity, how a segment's prompt nodes are linked, what Undo prompt takes back, and the
options panel's table."""

from __future__ import annotations

import dataclasses
import re

import pytest

from medicosam.device import DEVICE_CHOICES
from medicosam.effect.history import PromptHistory, PromptStep
from medicosam.effect.interaction import FLIPPED_TOOLS, TOOL_PROMPTS, get_press_action
from medicosam.effect.links import CHOSEN_ROLES, NEGATIVE_SCRIBBLE, PROMPT_ROLES, get_reference_role
from medicosam.effect.panel import ROWS, SECTIONS, get_value, is_row_shown, set_value
from medicosam.effect.settings import (
    CUSTOM_MODEL,
    DIRECTION_LABELS,
    MODE_LABELS,
    NOT_PARAMETERS,
    TOOLS,
    EffectSettings,
    ServerSettings,
)
from medicosam.errors import InputError
from medicosam.markups import is_negative_list
from medicosam.models.families import FAMILIES, PROPAGATION_SETTINGS
from medicosam.models.registry import MODELS
from medicosam.options import get_option_fields
from medicosam.prompts import PROPAGATION_MODES
from medicosam.propagation import PropagationConfig

# What a press does -----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool, place_mode, modified, on_markup, busy, action", [
    ("positive", False, False, False, False, "point"),
    ("negative_scribble", False, False, False, False, "stroke"),
    ("lasso", False, False, False, False, "stroke"),
    ("box", False, False, False, False, "box"),
    ("positive", False, False, True, False, "slicer"),  # a hovered point or handle: the markups widget drags it
    ("box", False, False, True, True, "slicer"),  # even while busy: moving a point only queues an update
    ("positive", True, False, False, False, "slicer"),  # place mode places
    ("scribble", False, True, False, False, "slicer"),  # Shift / Ctrl / Alt presses are Slicer's
    ("positive", False, False, False, True, "wait"),
])
def test_a_press_is_the_tools_prompt_unless_slicer_needs_it(tool, place_mode, modified, on_markup, busy, action):
    assert get_press_action(tool, place_mode, modified, on_markup, busy) == action


def test_tools_add_to_prompt_roles_and_flip_between_polarities():
    assert tuple(TOOL_PROMPTS) == TOOLS and {role for role, _ in TOOL_PROMPTS.values()} == set(PROMPT_ROLES)
    for tool, flipped in FLIPPED_TOOLS.items():
        assert FLIPPED_TOOLS[flipped] == tool
        assert TOOL_PROMPTS[tool][1] != TOOL_PROMPTS[flipped][1]  # the other polarity (points: the other list)
    assert set(TOOLS) - set(FLIPPED_TOOLS) == {"box", "lasso"}  # no polarity
    assert EffectSettings(tool="negative_scribble").tool == "negative_scribble"
    with pytest.raises(InputError, match="unknown tool"):
        EffectSettings(tool="brush")


# Links: node references on the segmentation node -----------------------------------------------------


def parse_references(attribute: str) -> dict:
    """Slicer's reader of a node's `references="role1:id1 id2;role2:id3;"` attribute
    (vtkMRMLNode::ParseReferencesAttribute at v5.6.2: split at ';', then at the first ':', ids at whitespace)."""
    found = {}
    for part in attribute.split(";"):
        if ":" in part:
            role, ids = part.split(":", 1)
            found[role] = ids.split()
    return found


@pytest.mark.parametrize("segment_id", ["Segment_1", "kidney left", "a:b;c", 'quote" <x> & y', "Niere/links", "ü 肝",
                                        "%41"])
def test_a_segments_reference_role_survives_the_scene_file(segment_id):
    roles = {role: get_reference_role(role, segment_id) for role in PROMPT_ROLES}
    assert all(re.fullmatch(r"MedicoSAM/[a-z]+/[A-Za-z0-9_.~%-]+", value) for value in roles.values())  # XML-safe
    written = "".join(f"{value}:vtkMRMLMarkupsFiducialNode{n} vtkMRMLMarkupsFiducialNode9;"
                      for n, value in enumerate(roles.values()))  # vtkMRMLNode::WriteXML
    read = parse_references(written)
    assert list(read) == list(roles.values()) and all(len(ids) == 2 for ids in read.values())


def test_reference_roles_are_one_per_role_and_segment():
    ids = ["Segment_1", "Segment_1 ", "segment_1", "Segment%5F1", "Segment_1/x", ""]
    roles = {get_reference_role(role, segment_id) for role in PROMPT_ROLES for segment_id in ids}
    assert len(roles) == len(PROMPT_ROLES) * len(ids)
    with pytest.raises(ValueError, match="unknown prompt role"):
        get_reference_role("brush", "Segment_1")


def test_nodes_the_effect_creates_keep_their_sign_in_files():
    assert CHOSEN_ROLES == ("positive", "negative", "roi")
    assert is_negative_list(PROMPT_ROLES["negative"].name) and is_negative_list(NEGATIVE_SCRIBBLE[0])
    assert not any(is_negative_list(spec.name) for role, spec in PROMPT_ROLES.items() if role != "negative")
    assert {spec.node_class for spec in PROMPT_ROLES.values()} == {
        "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode", "vtkMRMLMarkupsClosedCurveNode",
        "vtkMRMLMarkupsCurveNode"}


# Undo prompt -----------------------------------------------------------------------------------------


def test_undo_prompt_takes_back_the_newest_prompt_that_still_exists():
    history = PromptHistory(limit=4)
    a, b = ("seg", "A"), ("seg", "B")
    steps = [PromptStep("point", "list", "1"), PromptStep("roi", "roi", roi_before=None),
             PromptStep("stroke", "curve"), PromptStep("point", "list", "2")]
    for step in steps:
        history.push(a, step)
    history.push(b, PromptStep("point", "other", "1"))
    deleted = {("list", "2")}  # the user deleted the newest point with the Markups module
    exists = lambda step: (step.node_id, step.point_id) not in deleted  # noqa: E731
    assert history.pop(a, exists) == steps[2]  # the deleted point is skipped (and dropped)
    assert history.pop(a, exists) == steps[1]
    history.push(a, PromptStep("point", "list", "3"))
    assert [history.pop(a, exists) for _ in range(3)] == [PromptStep("point", "list", "3"), steps[0], None]
    assert history.pop(b, exists) == PromptStep("point", "other", "1")  # segments keep their own history
    for n in range(6):
        history.push(a, PromptStep("point", "more", str(n)))
    assert [history.pop(a, exists).point_id for _ in range(4)] == ["5", "4", "3", "2"]  # the limit keeps the newest
    assert history.pop(a, exists) is None
    history.push(b, PromptStep("stroke", "curve"))
    history.forget(b)
    assert history.pop(b, exists) is None


# The options panel's table ---------------------------------------------------------------------------


def get_settings_fields():
    """Every settings field an annotator may edit: the scene parameters but the tool (its buttons), the
    propagation options but the ROI's slice range, and where the model runs."""
    own = [field.name for field in dataclasses.fields(EffectSettings) if "parameter" in field.metadata]
    propagation = [f"propagation.{field.name}" for field in get_option_fields(PropagationConfig)
                   if field.name not in NOT_PARAMETERS]
    server = [f"server.{field.name}" for field in dataclasses.fields(ServerSettings)]
    return set(own) - {"tool"} | set(propagation) | set(server)


def test_every_editable_field_is_one_row_of_the_panel():
    fields = [row.field for row in ROWS]
    assert len(fields) == len(set(fields)) and set(fields) == get_settings_fields()
    assert all(row.section in SECTIONS and row.tip for row in ROWS)
    choices = {row.field: row.choices for row in ROWS}
    assert set(choices["device"]) == set(DEVICE_CHOICES) and set(choices["propagation.mode"]) == set(PROPAGATION_MODES)
    assert choices["propagation.mode"] == MODE_LABELS and choices["propagation.direction"] == DIRECTION_LABELS
    for direction in DIRECTION_LABELS:
        PropagationConfig(direction=direction)


def test_rows_read_and_write_their_field_and_the_settings_check_the_value():
    settings = EffectSettings()
    for row in ROWS:
        assert get_value(set_value(settings, row.field, get_value(settings, row.field)), row.field) == \
            get_value(settings, row.field)
    changed = set_value(settings, "propagation.max_slices", None)
    assert changed.propagation.max_slices is None and changed.model == settings.model
    assert set_value(settings, "server.url", "http://gpu:8765").server.url == "http://gpu:8765"
    with pytest.raises(InputError):
        set_value(settings, "propagation.iou_threshold", 2.0)
    with pytest.raises(InputError):
        set_value(settings, "cache_mb", 8)
    spin = next(row for row in ROWS if row.field == "propagation.max_slices")
    assert spin.kind == "integer" and spin.none_text and spin.minimum == 0  # 0 shows "until the object ends"


def test_rows_shown_follow_where_the_model_runs_and_the_model():
    local, remote = EffectSettings(), EffectSettings(server=ServerSettings("server", "http://gpu:8765"))
    custom = dataclasses.replace(local, model=CUSTOM_MODEL)

    def shown(settings):
        return {row.field for row in ROWS if is_row_shown(row, settings)}

    assert {"model", "device", "cache_mb"} <= shown(local) and not shown(local) & {"server.url", "server.token"}
    assert "custom_checkpoint" not in shown(local) and "custom_checkpoint" in shown(custom)
    assert shown(remote) >= {"server.url", "server.token", "server.remember_token", "fast", "propagation.mode"}
    assert not shown(remote) & {"model", "device", "cache_mb", "custom_checkpoint"}


@pytest.mark.parametrize("family", FAMILIES.values(), ids=lambda family: family.name)
def test_each_familys_panel_shows_exactly_the_propagation_settings_it_honours(family):
    """The capability test: with a model of the family chosen, the panel's propagation rows are those
    the family's engine honours; one it honours without a row is set by the segment's ROI."""
    model = next(name for name, spec in MODELS.items() if spec.family == family.name)
    settings = EffectSettings(model=model)
    assert settings.family is family
    honoured = family.capabilities.propagation_settings
    rows = {row.field.partition(".")[2]: row for row in ROWS if row.field.startswith("propagation.")}
    assert {name for name, row in rows.items() if is_row_shown(row, settings)} == honoured & set(rows)
    assert honoured - set(rows) <= {"slice_range"}
    remote = dataclasses.replace(settings, server=ServerSettings("server", "http://gpu:8765"))
    assert all(is_row_shown(row, remote) for row in rows.values())  # the server's model is not known here


def test_families_honour_propagation_settings_that_exist():
    """Prompt propagation (SAM, LiteMedSAM) honours every `PropagationConfig` field, a new one too; SAM2's
    video engine the three it implements."""
    assert all(family.capabilities.propagation_settings <= PROPAGATION_SETTINGS for family in FAMILIES.values())
    assert {field.name for field in get_option_fields(PropagationConfig)} == PROPAGATION_SETTINGS
    assert FAMILIES["sam2"].capabilities.propagation_settings == {"direction", "max_slices", "slice_range"}
    assert FAMILIES["sam"].capabilities.propagation_settings == FAMILIES["lite"].capabilities.propagation_settings
