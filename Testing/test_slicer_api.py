"""The Slicer layer against Slicer's real API, without Slicer: member names and keyboard shortcuts.

`Testing/slicer_api/slicer-<tag>.json` lists, per Slicer release, the Python-visible members of the
classes the effect uses (read from Slicer's source by `Testing/slicer_api/generate.py`; see
docs/slicer.md). The checker walks the AST of each Slicer-side file and types the receivers it can:
`scriptedEffect` / `self.scriptedEffect`, `slicer.util`, `slicer.app`, `slicer.mrmlScene`, `slicer.<class>`,
variables by the names the files use for Slicer objects (`RECEIVERS`), variables assigned from typed calls,
and call chains through the return types the headers declare. A member of a typed receiver must exist
in that class or its Slicer bases in at least one release; `self.<method>()` must be defined in the file's
class or its Slicer base class; the effect's helper objects (`self.markups`, `self.panel`, ..., and the
effect itself as `self.effect` or `scriptedEffect.self()`: `HELPERS`) must have the methods called on them
in the Slicer files' class of that name; any other `x.name()` must be a name of some listed class, of the
`medicosam` core, of Python's builtin types, or of `QT_METHODS` / `VTK_METHODS` / `OTHER_METHODS`
(Qt, CTK, VTK, torch and SlicerPyTorch are not in Slicer's tree). Attributes of the standard library
and numpy are checked by importing them.
"""

from __future__ import annotations

import ast
import builtins
import functools
import importlib
import inspect
import json
import sys
import unittest
from concurrent.futures import Future
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np
import pytest

from medicosam.effect.settings import SHORTCUTS

ROOT = Path(__file__).resolve().parents[1]
API_DIR = ROOT / "Testing" / "slicer_api"
TAGS = ("v5.6.2", "v5.10.0")
SLICER_FILES = [ROOT / "MedicoSAMSlicer" / "SegmentEditorMedicoSAM.py",
                *sorted((ROOT / "MedicoSAMSlicer" / "SegmentEditorMedicoSAMLib").glob("*.py"))]
CORE_DIR = ROOT / "MedicoSAMSlicer" / "medicosam"
EFFECT_FILE = ROOT / "MedicoSAMSlicer" / "SegmentEditorMedicoSAMLib" / "SegmentEditorEffect.py"

#: Variable names the Slicer files give Slicer objects -> their class.
RECEIVERS = {
    "scriptedEffect": "qSlicerSegmentEditorScriptedEffect", "effect": "qSlicerSegmentEditorScriptedEffect",
    "parameterSetNode": "vtkMRMLSegmentEditorNode", "segmentationNode": "vtkMRMLSegmentationNode",
    "volumeNode": "vtkMRMLScalarVolumeNode", "transformNode": "vtkMRMLTransformNode",
    "sliceNode": "vtkMRMLSliceNode", "sliceWidget": "qMRMLSliceWidget", "viewWidget": "qMRMLSliceWidget",
    "editor": "qMRMLSegmentEditorWidget", "reference": "vtkOrientedImageData", "source": "vtkOrientedImageData",
    "labelmap": "vtkOrientedImageData", "modifier": "vtkOrientedImageData", "image": "vtkOrientedImageData",
    "display": "vtkMRMLDisplayNode", "instance": "qSlicerSegmentEditorScriptedEffect",
    "clonedEffect": "qSlicerSegmentEditorScriptedEffect", "markupsNode": "vtkMRMLMarkupsNode",
    "pointListNode": "vtkMRMLMarkupsFiducialNode", "roiNode": "vtkMRMLMarkupsROINode",
    "interactionNode": "vtkMRMLInteractionNode",
}
#: Attributes holding the effect's helper objects (and the effect) -> their class in the Slicer files.
HELPERS = {"markups": "MarkupsPrompts", "panel": "OptionsPanel", "preview": "PreviewDisplay",
           "dependencies": "Dependencies", "effect": "SegmentEditorEffect"}
#: Module-level objects of `slicer` -> their class.
SLICER_OBJECTS = {"app": "qSlicerApplication", "mrmlScene": "vtkMRMLScene"}
#: Python base classes in Slicer's source (their method lists are in the JSON files too).
PYTHON_BASES = {"AbstractScriptedSegmentEditorEffect": ["AbstractScriptedSegmentEditorEffect"],
                "ScriptedLoadableModule": ["ScriptedLoadableModule"],
                "ScriptedLoadableModuleTest": ["ScriptedLoadableModuleTest"]}
#: Methods the files call on Qt / CTK objects and on VTK objects, whose classes are not in Slicer's tree
#: (QObject, QWidget and Qt widget methods, QSettings' `value` / `setValue`; the VTK interactor, matrix, image
#: and data-array methods).
#: A listed Slicer class may use the set of its library (PythonQt adds `className` to every QObject).
QT_METHODS = {
    "addButton", "addItem", "addRow", "addWidget", "blockSignals", "className", "clear", "close", "connect",
    "deleteLater", "disconnect", "findData", "itemData", "processEvents", "setCancelButton", "setCurrentIndex",
    "setInterval", "setLabelText", "setMaximum", "setParent", "setRange", "setSingleStep", "setToolTip",
    "setValue", "setWindowModality", "setWindowTitle", "show", "singleShot", "start", "stop", "isActive",
    "setSingleShot", "value",
}
VTK_METHODS = {
    "AllocateScalars", "Fill", "GetAltKey", "GetControlKey", "GetDimensions", "GetElement", "GetEventPosition",
    "GetExtent", "GetMTime", "GetPointData", "GetScalars", "GetShiftKey", "Modified", "SetExtent",
    "AddObserver", "RemoveObserver",
}
#: Methods of other libraries the files call: torch.nn.Module, and SlicerPyTorch's PyTorchUtilsLogic
#: (`installTorch(askConfirmation=False, ...)` at fepegar/SlicerPyTorch e1c85cc).
OTHER_METHODS = {"parameters", "installTorch"}


def load_api() -> Dict[str, dict]:
    return {tag: json.loads((API_DIR / f"slicer-{tag}.json").read_text()) for tag in TAGS}


API = load_api()


def get_ancestors(name: str, api: dict) -> List[str]:
    """The class and all its bases (those outside Slicer's tree by name only)."""
    found, queue = [], [name]
    while queue:
        current = queue.pop(0)
        if current not in found:
            found.append(current)
            queue += api["classes"].get(current, {}).get("bases", [])
    return found


@functools.cache
def get_members(name: str) -> Set[str]:
    """Members an object typed `name` may have in any release: those of the class, of its bases, and of
    the listed classes derived from it (a header's return type is often a base, e.g. vtkMRMLNode)."""
    members: Set[str] = set()
    for api in API.values():
        related = {name} | {other for other in api["classes"] if name in get_ancestors(other, api)}
        for cls in related:
            for ancestor in get_ancestors(cls, api):
                if ancestor in api["classes"]:
                    members |= set(api["classes"][ancestor]["members"])
                else:  # a Qt / CTK or VTK base class
                    members |= VTK_METHODS if ancestor.startswith("vtk") else QT_METHODS
    return members


@functools.cache
def get_return_class(name: str, method: str) -> Optional[str]:
    """The class a Slicer method returns (as its header declares), if listed."""
    for api in API.values():
        queue = [name]
        while queue:
            entry = api["classes"].get(queue.pop(0))
            if entry is None:
                continue
            if method in entry["returns"]:
                returned = entry["returns"][method]
                return returned if returned in api["classes"] else None
            queue += entry["bases"]
    return None


def get_core_names() -> Set[str]:
    """Functions, classes, methods and attributes defined in the `medicosam` core."""
    names: Set[str] = set()
    for path in CORE_DIR.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
    return names


@functools.cache
def get_known_names() -> Set[str]:
    """Every name an unresolved receiver may be called with."""
    names = QT_METHODS | VTK_METHODS | OTHER_METHODS | get_core_names()
    for api in API.values():
        for entry in api["classes"].values():
            names |= set(entry["members"])
        for members in api["python"].values():
            names |= set(members)
    for kind in (list, dict, set, tuple, str, bytes, np.ndarray, Future, Path):
        names |= set(dir(kind))
    return names


def get_python_base_methods(base: str) -> Set[str]:
    methods: Set[str] = set(dir(unittest.TestCase)) if base == "ScriptedLoadableModuleTest" else set()
    for python_class in PYTHON_BASES.get(base, []):
        for api in API.values():
            methods |= set(api["python"].get(python_class, []))
    return methods


@functools.cache
def get_local_methods(name: str) -> Set[str]:
    """Methods of the Slicer files' class `name` (with its Slicer base class's): the effect, which
    `scriptedEffect.self()` returns, and its helper classes."""
    for path in SLICER_FILES:
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
                for base in node.bases:
                    methods |= get_python_base_methods(getattr(base, "id", ""))
                return methods
    raise LookupError(f"no class {name} in the Slicer files")


def is_listed_class(name: str) -> bool:
    return any(name in api["classes"] for api in API.values())


def import_checkable(name: str):
    """The module if it can be checked here (the standard library, numpy), else None (Slicer's modules)."""
    top = name.split(".")[0]
    if top != "numpy" and top not in getattr(sys, "stdlib_module_names", ()):
        return None
    return importlib.import_module(name)


class Checker:
    """Finds member names the Slicer-side source uses that Slicer does not have."""

    def __init__(self, source: str, filename: str = "<source>"):
        self.tree = ast.parse(source, filename)
        self.filename = filename
        self.known = get_known_names()
        self.errors: List[str] = []
        self.called = {id(node.func) for node in ast.walk(self.tree) if isinstance(node, ast.Call)}

    def run(self) -> List[str]:
        self.modules = self.get_module_aliases()
        for node in self.tree.body:
            if isinstance(node, ast.ClassDef):
                self.check_class(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.check_function(node, None)
        return self.errors

    def get_module_aliases(self) -> Dict[str, str]:
        aliases = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                aliases.update({alias.asname or alias.name: alias.name for alias in node.names})
        return aliases

    def check_class(self, node: ast.ClassDef) -> None:
        methods = {item.name for item in node.body if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for base in node.bases:
            methods |= get_python_base_methods(base.id if isinstance(base, ast.Name) else getattr(base, "attr", ""))
        for item in node.body:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.check_function(item, methods)

    def check_function(self, function, methods: Optional[Set[str]]) -> None:
        """Statements in source order, nested ones included; an assignment types its variable from then on."""
        self.methods = methods
        self.env: Dict[str, tuple] = {}
        statements = [node for node in ast.walk(function) if isinstance(node, ast.stmt) and node is not function]
        for statement in sorted(statements, key=lambda node: (node.lineno, node.col_offset)):
            for node in iter_expression_nodes(statement):
                if isinstance(node, ast.Attribute):
                    self.check_attribute(node)
            if isinstance(statement, ast.Assign) and [type(target) for target in statement.targets] == [ast.Name]:
                self.env[statement.targets[0].id] = self.infer(statement.value) or ("unknown",)

    def infer(self, node: ast.AST) -> Optional[tuple]:
        """("class", name), ("module", name), ("local", name) (a class of the Slicer files) or ("self",) for
        what `node` evaluates to, if known."""
        if isinstance(node, ast.Name):
            if node.id == "self" and self.methods is not None:
                return ("self",)
            if node.id in self.env:  # assigned in this function: its type, not the name's
                return None if self.env[node.id] == ("unknown",) else self.env[node.id]
            if node.id in RECEIVERS:
                return ("class", RECEIVERS[node.id])
            if node.id in self.modules:
                return ("module", self.modules[node.id])
            return None
        if isinstance(node, ast.Attribute):
            base = self.infer(node.value)
            if base is not None and base[0] in ("self", "local") and node.attr == "scriptedEffect":
                return ("class", RECEIVERS["scriptedEffect"])
            if base is not None and base[0] in ("self", "local") and node.attr in HELPERS:
                return ("local", HELPERS[node.attr])
            if base == ("module", "slicer") and node.attr == "util":
                return ("module", "slicer.util")
            if base == ("module", "slicer") and node.attr in SLICER_OBJECTS:
                return ("class", SLICER_OBJECTS[node.attr])
            if base is not None and base[0] == "module" and import_checkable(base[1]) is not None:
                value = getattr(import_checkable(base[1]), node.attr, None)
                return ("module", value.__name__) if inspect.ismodule(value) else None
            if base is not None and base[0] == "module" and is_listed_class(node.attr):
                return ("class", node.attr)  # slicer.<class>, or a Slicer module's (PythonQt) classes
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = self.infer(node.func.value)
            if base == ("class", "qSlicerSegmentEditorScriptedEffect") and node.func.attr == "self":
                return ("local", HELPERS["effect"])
            if base is not None and base[0] == "class":
                returned = get_return_class(base[1], node.func.attr)
                return None if returned is None else ("class", returned)
            if base is not None and base[0] == "module" and is_listed_class(node.func.attr):
                return ("class", node.func.attr)  # a constructor
        return None

    def check_attribute(self, node: ast.Attribute) -> None:
        base = self.infer(node.value)
        name, where = node.attr, f"{self.filename}:{node.lineno}"
        if base is not None and base[0] == "class":
            if name not in get_members(base[1]):
                self.errors.append(f"{where}: {base[1]} has no member {name} in Slicer {' or '.join(TAGS)}")
        elif base == ("module", "slicer.util"):
            if not any(name in api["python"]["util"] for api in API.values()):
                self.errors.append(f"{where}: slicer.util has no {name} in Slicer {' or '.join(TAGS)}")
        elif base is not None and base[0] == "module":
            module = import_checkable(base[1])
            if module is not None and not hasattr(module, name):
                self.errors.append(f"{where}: {base[1]} has no {name}")
        elif base == ("self",):
            if self.is_called(node) and name not in self.methods:
                self.errors.append(f"{where}: self.{name}() is defined neither in the class nor in its Slicer base")
        elif base is not None and base[0] == "local":
            if self.is_called(node) and name not in get_local_methods(base[1]):
                self.errors.append(f"{where}: {base[1]} has no method {name}()")
        elif base is None and self.is_called(node) and name not in self.known and not hasattr(builtins, name):
            self.errors.append(f"{where}: {name}() is a method of no Slicer class listed, of the core, of "
                               "Python's builtin types or of QT_METHODS / VTK_METHODS / OTHER_METHODS")

    def is_called(self, node: ast.Attribute) -> bool:
        return id(node) in self.called


def iter_expression_nodes(statement: ast.stmt):
    """The nodes of a statement itself, not of the statements nested in it."""
    queue = list(ast.iter_child_nodes(statement))
    while queue:
        node = queue.pop()
        if not isinstance(node, ast.stmt):
            yield node
            queue += ast.iter_child_nodes(node)


def check_source(source: str, filename: str = "<source>") -> List[str]:
    return Checker(source, filename).run()


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_slicer_files_use_only_members_slicer_has(path):
    errors = check_source(path.read_text(encoding="utf-8"), path.name)
    assert errors == [], "\n".join(errors)


def test_the_checker_finds_misspelled_and_missing_members():
    source = """
import numpy as np
import slicer


class Effect(AbstractScriptedSegmentEditorEffect):
    def activate(self):
        self.scriptedEffect.parametr("Tool")
        node = self.scriptedEffect.parameterSetNode()
        node.GetSegmentationNode().GetSegmentation().GetSegmnt("1")
        self.scriptedEffect.modifySelectedSegmentByLabelmap(None, slicer.qSlicerSegmentEditorAbstractEffect.ModeAdd)
        slicer.util.arrayFromVolumes(node)
        slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNod()
        np.zeroes(3)
        self.xyToRass()
        self.helperThatIsNotThere()
        anything.frobnicate()
        self.markups.readMarkups()
        self.scriptedEffect.self().markups.read()
"""
    errors = check_source(source)
    assert [error.split(": ", 1)[1] for error in errors] == [
        "qSlicerSegmentEditorScriptedEffect has no member parametr in Slicer v5.6.2 or v5.10.0",
        "vtkSegmentation has no member GetSegmnt in Slicer v5.6.2 or v5.10.0",
        "qSlicerSegmentEditorAbstractEffect has no member ModeAdd in Slicer v5.6.2 or v5.10.0",
        "slicer.util has no arrayFromVolumes in Slicer v5.6.2 or v5.10.0",
        "qMRMLSliceWidget has no member mrmlSliceNod in Slicer v5.6.2 or v5.10.0",
        "numpy has no zeroes",
        "self.xyToRass() is defined neither in the class nor in its Slicer base",
        "self.helperThatIsNotThere() is defined neither in the class nor in its Slicer base",
        "frobnicate() is a method of no Slicer class listed, of the core, of Python's builtin types or of "
        "QT_METHODS / VTK_METHODS / OTHER_METHODS",
        "MarkupsPrompts has no method readMarkups()",
    ]
    correct = source.replace("parametr", "parameter").replace("GetSegmnt", "GetSegment").replace(
        "ModeAdd", "ModificationModeAdd").replace("arrayFromVolumes", "arrayFromVolume").replace(
        "mrmlSliceNod", "mrmlSliceNode").replace("zeroes", "zeros").replace("xyToRass", "xyToRas").replace(
        "readMarkups", "read")
    assert len(check_source(correct)) == 2  # the helper and frobnicate stay unknown


def test_api_lists_cover_every_class_the_checker_types():
    generate = load_generator()
    for tag, api in API.items():
        assert api["tag"] == tag
        assert set(generate.CLASSES) <= set(api["classes"]), "run Testing/slicer_api/generate.py again"
        assert set(RECEIVERS.values()) | set(SLICER_OBJECTS.values()) <= set(api["classes"])
        assert "tryWithErrorDisplay" in api["python"]["util"] and "xyToRas" in api["classes"][
            "qSlicerSegmentEditorAbstractEffect"]["members"]


def load_generator():
    spec = importlib.util.spec_from_file_location("slicer_api_generate", API_DIR / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generator_reads_what_the_python_wrappers_expose():
    header = """
class Q_EXPORT qFoo : public qBar
{
  Q_OBJECT
  Q_PROPERTY(bool perSegment READ perSegment WRITE setPerSegment)
public:
  enum Mode { ModeA = 0, ModeB };
  Q_INVOKABLE vtkMRMLSliceNode* sliceNode() const;
  void notInvokable(); // PythonQt cannot call it
  Q_INVOKABLE virtual QString helpText() const { return QString(); };
public slots:
  void undo();
signals:
  void changed(int);
protected:
  Q_INVOKABLE void hidden();
};
class VTK_EXPORT vtkFoo : public vtkMRMLNode
{
public:
  vtkTypeMacro(vtkFoo, vtkMRMLNode);
  vtkGetMacro(Opacity, double);
  vtkBooleanMacro(Visibility, int);
  vtkGetObjectMacro(Segmentation, vtkSegmentation);
  virtual vtkMRMLNode* GetNode(int n);
protected:
  void Internal();
};
"""
    generate = load_generator()
    bases, body = generate.find_class_body(generate.strip_comments(header), "qFoo")
    members, returns = generate.parse_class(body, "qFoo", qt_class=True)
    assert bases == ["qBar"]
    assert members == {"perSegment", "ModeA", "ModeB", "sliceNode", "helpText", "undo", "changed"}
    assert returns == {"sliceNode": "vtkMRMLSliceNode"}
    bases, body = generate.find_class_body(generate.strip_comments(header), "vtkFoo")
    members, returns = generate.parse_class(body, "vtkFoo", qt_class=False)
    assert bases == ["vtkMRMLNode"]
    assert members == {"GetClassName", "IsA", "IsTypeOf", "SafeDownCast", "NewInstance", "GetOpacity",
                       "VisibilityOn", "VisibilityOff", "GetSegmentation", "GetNode"}
    assert returns == {"GetSegmentation": "vtkSegmentation", "GetNode": "vtkMRMLNode"}


#: Keys core Slicer binds (v5.6.2 and v5.10.0): qMRMLSegmentEditorWidget::installKeyboardShortcuts (on the
#: main window: effects 0-9 and Shift+0-9, Escape, Space, undo Z / redo Y, previous / next segment
#: Q W / * , . < >, toggle intensity mask I); the slice views (vtkMRMLSliceIntersectionWidget: g t f b v
#: [ ] { } r and arrows, V with any modifier), the 3D views (vtkMRMLCameraWidget: b r + - arrows, keypad,
#: Home End Insert Next Clear, with Shift too) and markups (vtkSlicerMarkupsWidget: s Delete BackSpace).
#: Letters are upper case, as QKeySequence reads them (a shortcut "G" is the unmodified g key).
SLICER_KEYS = {*"0123456789", *(f"Shift+{digit}" for digit in "0123456789"), "Esc", "Space", "Z", "Y", "Q", "W",
               "I", "/", "*", ",", ".", "<", ">", "G", "T", "F", "B", "V", "Shift+V", "[", "]", "{", "}", "R",
               "Left", "Right", "Up", "Down", "+", "-", "Home", "End", "Ins", "PgDown", "Clear", "S", "Del",
               "Backspace"}
#: SlicerNNInteractive keeps these on the main window while its module is shown.
NNINTERACTIVE_KEYS = {"P", "B", "L", "S", "E", "R", "T", "V", "Del"}


def test_shortcuts_collide_with_no_slicer_or_nninteractive_key():
    keys = set(SHORTCUTS)
    assert keys.isdisjoint(SLICER_KEYS), sorted(keys & SLICER_KEYS)
    assert keys.isdisjoint(NNINTERACTIVE_KEYS), sorted(keys & NNINTERACTIVE_KEYS)
    letters = [key.removeprefix("Shift+") for key in keys]
    assert all(len(letter) == 1 and letter.isupper() for letter in letters)  # letters, with Shift at most
    assert len(set(SHORTCUTS.values())) == len(SHORTCUTS)  # one key per action
    assert set(SHORTCUTS.values()) >= {"positive", "negative", "box", "lasso", "scribble", "flip", "apply",
                                       "propagate", "clear", "undo_prompt", "refine", "reset", "new_segment"}
