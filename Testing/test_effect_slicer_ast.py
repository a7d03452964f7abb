"""What only the Slicer files can hold, checked on their syntax tree (Slicer does not run here): a press
on a hovered markup goes to Slicer, a segment switch is observed, prompt links are node references,
writes ask to show a hidden segment and make no empty undo point, ctest meets the "not run" guard, and
every shortcut and button has its action. `test_slicer_api.py` checks the members these calls use."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List

from medicosam.effect.settings import SHORTCUTS, TOOLS

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "MedicoSAMSlicer" / "SegmentEditorMedicoSAMLib"
MODULE = ROOT / "MedicoSAMSlicer" / "SegmentEditorMedicoSAM.py"


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"))


def get_function(path: Path, name: str) -> ast.FunctionDef:
    """A method (of any class) or module-level function of `path` named `name`."""
    found = [node for node in ast.walk(parse(path)) if isinstance(node, ast.FunctionDef) and node.name == name]
    assert len(found) == 1, f"{path.name} should define {name} once"
    return found[0]


def get_calls(node: ast.AST) -> List[ast.Call]:
    """The calls in `node`, in source order."""
    calls = [call for call in ast.walk(node) if isinstance(call, ast.Call)]
    return sorted(calls, key=lambda call: (call.lineno, call.col_offset))


def get_name(call: ast.Call) -> str:
    return call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")


def get_called(node: ast.AST) -> List[str]:
    return [get_name(call) for call in get_calls(node)]


def get_line(node: ast.AST, name: str) -> int:
    """The line of the first call of `name` in `node`."""
    return next(call.lineno for call in get_calls(node) if get_name(call) == name)


EFFECT = LIB / "SegmentEditorEffect.py"


def test_a_press_on_a_hovered_markup_goes_to_slicer():
    """Defect 1: the markups widget drags a point only if it gets the press (the Segment Editor blocks
    presses its effect takes), so the effect lets through a press while a markup component is hovered."""
    process = get_function(EFFECT, "processInteractionEvents")
    assert "onPress" in get_called(process)
    press = get_function(EFFECT, "onPress")
    decision = next(call for call in get_calls(press) if get_name(call) == "get_press_action")
    keywords = {keyword.arg: keyword.value for keyword in decision.keywords}
    assert isinstance(keywords["on_markup"], ast.Call) and get_name(keywords["on_markup"]) == "isMarkupHovered"
    passes = [node for node in ast.walk(press) if isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
              and getattr(node.test.comparators[0], "value", None) == "slicer"]
    assert passes and isinstance(passes[0].body[0], ast.Return) and passes[0].body[0].value.value is False
    hovered = ast.unparse(get_function(EFFECT, "isMarkupHovered"))
    assert "GetActiveComponentType()" in hovered and "ComponentNone" in hovered
    assert "getNodesByClass('vtkMRMLMarkupsDisplayNode')" in hovered  # any markup: the user's own ones too


def test_switching_segment_is_observed_and_followed():
    """Defect 2: the selected segment is no effect parameter; its changes come as the segment editor node's
    Modified events, and the selectors, place buttons, observers and preview follow the new segment."""
    assert "observeParameterSetNode" in get_called(get_function(EFFECT, "activate"))
    observe = get_function(EFFECT, "observeParameterSetNode")
    call = next(call for call in get_calls(observe) if get_name(call) == "AddObserver")
    assert ast.unparse(call.func.value) == "parameterSetNode"
    assert [ast.unparse(arg) for arg in call.args] == ["vtk.vtkCommand.ModifiedEvent",
                                                       "self.onParameterSetNodeModified"]
    assert "parameterSetNode()" in ast.unparse(observe)
    modified = get_called(get_function(EFFECT, "onParameterSetNodeModified"))
    assert modified == ["getSessionKey", "onSegmentChanged"]
    changed = get_called(get_function(EFFECT, "onSegmentChanged"))
    assert {"updateSelectors", "clearDisplay", "stop_prefetch", "scheduleMarkupsUpdate"} <= set(changed)
    for name in ("deactivate", "releaseResources"):
        assert "unobserveParameterSetNode" in get_called(get_function(EFFECT, name))


def test_prompt_links_are_node_references_not_segment_tags():
    """Defects 3 and 4: scene import renames node IDs in references only, and undo restores segment tags."""
    for path in sorted(LIB.glob("*.py")) + [MODULE]:
        assert not {"SetTag", "GetTag"} & set(get_called(parse(path))), path.name
    markups = LIB / "MarkupsPrompts.py"
    for name, reference in (("getNode", "GetNodeReference"), ("setNode", "SetNodeReferenceID"),
                            ("getStrokes", "GetNthNodeReference"), ("finishStroke", "AddNodeReferenceID")):
        called = get_called(get_function(markups, name))
        assert reference in called and "get_reference_role" in called, name
        assert get_line(get_function(markups, name), "get_reference_role") <= \
            get_line(get_function(markups, name), reference)


def test_writes_ask_to_show_a_hidden_segment_and_make_no_empty_undo_point():
    """Defect 7: like Islands and Hollow, Apply / Propagate / Segment in ROI confirm the segment is shown
    before they write; an undo point is saved only when the request changes the segment."""
    for name, write in (("onApply", "writeRequest"), ("onPropagate", "runCancellableWrite"),
                        ("onSegmentInRoi", "runCancellableWrite")):
        action = get_function(EFFECT, name)
        assert get_line(action, "confirmSegmentVisible") < get_line(action, write), name
    assert "confirmCurrentSegmentVisible" in get_called(get_function(EFFECT, "confirmSegmentVisible"))
    write = get_function(EFFECT, "writeRequest")
    unchanged = next(node for node in ast.walk(write)
                     if isinstance(node, ast.If) and "changes" in get_called(node.test))
    assert isinstance(unchanged.body[-1], ast.Return) and unchanged.lineno < get_line(write, "saveStateForUndo")


def test_ctest_runs_only_the_guarded_run_test():
    """Defect 6: `slicer_add_python_unittest` loads the case with unittest, which runs each `test*` method
    and, when there is none, `runTest`; the guard that says "NOT RUN" without torch sits in `runTest`."""
    case = next(node for node in parse(MODULE).body if isinstance(node, ast.ClassDef)
                and node.name == "SegmentEditorMedicoSAMTest")
    methods = [item.name for item in case.body if isinstance(item, ast.FunctionDef)]
    assert "runTest" in methods and not [name for name in methods if name.startswith("test")]
    run = next(item for item in case.body if isinstance(item, ast.FunctionDef) and item.name == "runTest")
    statements = [statement for statement in run.body if not isinstance(statement, (ast.Import, ast.ImportFrom))]
    guard = statements[0]
    assert isinstance(guard, ast.If) and "is_torch_installed" in get_called(guard.test)
    assert isinstance(guard.body[-1], ast.Return)
    checks = [name for name in get_called(run) if name.startswith("check")]
    assert checks and all(name in methods for name in checks)


def test_every_shortcut_and_button_has_an_action():
    handlers = next(node for node in ast.walk(get_function(EFFECT, "onAction")) if isinstance(node, ast.Dict))
    actions = {key.value for key in handlers.keys} | set(TOOLS)
    assert set(SHORTCUTS.values()) <= actions
    panel = {node.targets[0].id: ast.literal_eval(node.value) for node in parse(LIB / "OptionsPanel.py").body
             if isinstance(node, ast.Assign) and node.targets[0].id.endswith("_BUTTONS")}
    buttons = {*panel["MODEL_BUTTONS"], *panel["ACTION_BUTTONS"], "propagate",
               *("propagate_" + direction for direction in panel["PROPAGATE_BUTTONS"])}
    assert buttons <= actions and set(panel["TOOL_BUTTONS"]) == set(TOOLS)
    assert {"apply", "clear", "undo_prompt", "reset", "segment_in_roi", "new_segment"} <= buttons
