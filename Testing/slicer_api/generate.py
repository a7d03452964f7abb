"""List the Python-visible member names of the Slicer classes the MedicoSAM effect uses, per Slicer tag.

Slicer cannot run here, so `Testing/test_slicer_api.py` checks the effect's calls against these lists.
They are read from Slicer's own source (a bare git clone, e.g. the one `fetch github:Slicer/Slicer`
gives) and written as names only, one JSON file per tag:

    python Testing/slicer_api/generate.py --git-dir /path/to/Slicer.git [--tags v5.6.2 v5.10.0]

What counts as Python-visible follows the two wrappers Slicer uses: VTK's wrapper exposes every public
method of a `vtk*` class (including those its `vtk...Macro`s declare); PythonQt exposes a `q*`
class's slots, signals, `Q_INVOKABLE` methods, `Q_PROPERTY`s and enum values, plus what Slicer's
`*PythonQtDecorators.h` headers add (e.g. `qSlicerCoreApplication.testingEnabled`). Base classes found in
Slicer's tree are listed too; bases outside it (VTK, Qt, CTK) are only named. Python modules (`slicer.util`,
the scripted-effect and scripted-module base classes) are read with `ast`.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
from pathlib import Path

DEFAULT_TAGS = ("v5.6.2", "v5.10.0")
OUT_DIR = Path(__file__).resolve().parent
#: Classes the effect and its self-test touch; their Slicer base classes are added automatically.
CLASSES = (
    "qSlicerSegmentEditorScriptedEffect", "qSlicerSegmentEditorAbstractEffect", "qMRMLSegmentEditorWidget",
    "vtkMRMLSegmentEditorNode", "vtkMRMLSegmentationNode", "vtkMRMLSegmentationDisplayNode", "vtkSegmentation",
    "vtkSegment", "vtkOrientedImageData", "vtkSlicerSegmentationsModuleLogic",
    "vtkMRMLMarkupsNode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLMarkupsROINode", "vtkMRMLMarkupsClosedCurveNode",
    "vtkMRMLMarkupsDisplayNode", "vtkMRMLSliceNode", "vtkMRMLSliceLogic", "qMRMLSliceWidget",
    "vtkMRMLScene", "vtkMRMLScalarVolumeNode", "vtkMRMLTransformNode", "vtkMRMLInteractionNode",
    "qSlicerApplication", "qSlicerLayoutManager", "vtkSlicerApplicationLogic", "vtkMRMLTransformableNode",
    "qMRMLNodeComboBox", "qSlicerMarkupsPlaceWidget",
)
#: Python module path in Slicer's tree -> the classes of it to list ("" lists the module's functions).
PYTHON = {
    "Base/Python/slicer/util.py": ("",),
    "Base/Python/slicer/ScriptedLoadableModule.py": ("ScriptedLoadableModule", "ScriptedLoadableModuleTest"),
    "Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/AbstractScriptedSegmentEditorEffect.py":
        ("AbstractScriptedSegmentEditorEffect",),
}

_LABEL = re.compile(r"\b(public|protected|private|signals|Q_SIGNALS)\s*(slots|Q_SLOTS)?\s*:(?!:)")
_MACRO = re.compile(r"\b(vtk\w*?Macro)\s*\(\s*(\w+)\s*(?:,\s*([\w:]+))?")
_KEYWORDS = {"if", "for", "while", "switch", "return", "sizeof", "operator", "defined", "decltype", "static_assert"}


def git(git_dir: Path, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(git_dir), *args], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return re.sub(r'"(\\.|[^"\\])*"', '""', text)


def find_class_body(text: str, name: str):
    """(base class names, body text) of `class [EXPORT] name : public Base {...};`, or None."""
    match = re.search(rf"\bclass\s+(?:\w+\s+)?{name}\b\s*(:[^{{;]*)?\{{", text)
    if match is None:
        return None
    bases = re.findall(r"(?:public|protected|private)?\s*([\w:]+)\s*(?:,|$)", (match.group(1) or ":")[1:].strip())
    depth, start = 1, match.end()
    for position in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return [base for base in bases if base], text[start:position]
    return None


def flatten_blocks(body: str) -> str:
    """The class body with nested `{...}` (inline bodies, enums, nested types) replaced by `;`."""
    out, depth = [], 0
    for char in body:
        if char == "{":
            depth += 1
            if depth == 1:
                out.append(";")
        elif char == "}":
            depth -= 1
        elif depth == 0:
            out.append(char)
    return "".join(out)


def parse_class(body: str, name: str, qt_class: bool):
    """(member names, method -> returned class name) visible from Python."""
    members, returns = set(), {}
    for match in re.finditer(r"\benum\s+(?:class\s+)?(\w*)\s*(?::\s*\w+\s*)?\{([^}]*)\}", body):
        members |= {item.split("=")[0].strip() for item in match.group(2).split(",") if item.strip()}
    members |= set(re.findall(r"\bQ_PROPERTY\(\s*[\w:<>*& ]+?\s+[*&]?(\w+)\s+READ\b", body))
    body = re.sub(r"\b(Q_OBJECT|QVTK_OBJECT)\b|\bQ_[A-Z_]+\([^()]*\)", ";", flatten_blocks(body))
    access = "private"
    for statement in re.split(rf"({_LABEL.pattern})|;", body):
        label = _LABEL.fullmatch(statement or "")
        if label:
            kind, slots = label.groups()
            if slots:
                access = "slot" if kind == "public" else "hidden"
            else:
                access = "signal" if kind in ("signals", "Q_SIGNALS") else kind
            continue
        statement = " ".join((statement or "").split())
        if not statement or statement.startswith(("typedef", "friend", "using", "template")):
            continue
        visible = access in ("slot", "signal") or (access == "public" and (not qt_class or "Q_INVOKABLE" in statement))
        if not visible:
            continue
        for macro, argument, kind in _MACRO.findall(statement):
            if macro == "vtkTypeMacro":
                members |= {"GetClassName", "IsA", "IsTypeOf", "SafeDownCast", "NewInstance"}
            elif macro == "vtkMRMLNodeNewMacro":
                members |= {"New", "CreateNodeInstance"}
            elif "Boolean" in macro:
                members |= {argument + "On", argument + "Off"}
            else:
                for verb in ("Get", "Set"):
                    if verb in macro:
                        members.add(verb + argument)
                if "Get" in macro and "Object" in macro and kind:
                    returns["Get" + argument] = kind
        if _MACRO.search(statement):
            continue
        declaration = re.match(r"(.*?)\b(~?\w+)\s*\(", statement)
        if declaration is None:
            continue
        prefix, method = declaration.groups()
        if method.startswith("~") or method == name or method in _KEYWORDS or re.fullmatch(r"[A-Z_0-9]+", method):
            continue
        members.add(method)
        returned = re.search(r"\b((?:vtk|q|Q)\w+)\s*\*\s*$", prefix)
        if returned:
            returns.setdefault(method, returned.group(1))
    return members, returns


def parse_decorators(text: str, classes) -> dict:
    """Class -> names that a PythonQt decorator header adds to it: `static_<Class>_<name>(...)` slots and
    instance slots `<name>(<Class>* self, ...)`."""
    added: dict = {}
    bodies = [find_class_body(text, name)[1] for name in re.findall(r"\bclass\s+(\w+)\s*:\s*public\s+QObject", text)]
    for statement in flatten_blocks("".join(bodies)).split(";"):
        statement = " ".join(statement.split())
        static = re.search(r"\bstatic_(\w+?)_(\w+)\s*\(", statement)
        if static and static.group(1) in classes:
            added.setdefault(static.group(1), set()).add(static.group(2))
            continue
        instance = re.search(r"\b(\w+)\s*\(\s*(?:const\s+)?(\w+)\s*\*", statement)
        if instance and instance.group(2) in classes:
            added.setdefault(instance.group(2), set()).add(instance.group(1))
    return added


def list_python(source: str, classes) -> dict:
    tree = ast.parse(source)
    found = {}
    for wanted in classes:
        nodes = tree.body if not wanted else next(node.body for node in tree.body
                                                  if isinstance(node, ast.ClassDef) and node.name == wanted)
        found[wanted] = sorted(node.name for node in nodes
                               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))
    return found


def generate(git_dir: Path, tag: str) -> dict:
    headers, decorators = {}, []
    for path in git(git_dir, "ls-tree", "-r", "--name-only", tag).splitlines():
        if path.endswith(".h") and "/Testing/" not in path:
            headers.setdefault(Path(path).stem, path)
            if path.endswith("PythonQtDecorators.h"):
                decorators.append(path)
    classes, external, queue = {}, set(), list(CLASSES)
    while queue:
        name = queue.pop(0)
        if name in classes or name in external:
            continue
        if name not in headers:
            external.add(name)
            continue
        parsed = find_class_body(strip_comments(git(git_dir, "show", f"{tag}:{headers[name]}")), name)
        if parsed is None:
            raise SystemExit(f"{tag}: no class {name} in {headers[name]}")
        bases, body = parsed
        members, returns = parse_class(body, name, qt_class=not name.startswith("vtk"))
        classes[name] = {"header": headers[name], "bases": bases, "members": sorted(members),
                         "returns": dict(sorted(returns.items()))}
        queue += bases
    for path in decorators:
        for name, added in parse_decorators(strip_comments(git(git_dir, "show", f"{tag}:{path}")), classes).items():
            classes[name]["members"] = sorted(set(classes[name]["members"]) | added)
    python = {}
    for path, wanted in PYTHON.items():
        for cls, names in list_python(git(git_dir, "show", f"{tag}:{path}"), wanted).items():
            python[cls or Path(path).stem] = names
    return {"tag": tag, "commit": git(git_dir, "rev-list", "-n", "1", tag).strip(), "classes": classes,
            "external_bases": sorted(external), "python": python}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git-dir", type=Path, required=True, help="a (bare) git clone of Slicer/Slicer")
    parser.add_argument("--tags", nargs="+", default=DEFAULT_TAGS)
    args = parser.parse_args()
    for tag in args.tags:
        path = OUT_DIR / f"slicer-{tag}.json"
        path.write_text(json.dumps(generate(args.git_dir, tag), indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
