"""The Slicer extension as a package: Extension Index files, CMake, icons, Python 3.9 syntax, lint,
and what importing the Slicer files does when Slicer is not there.

Slicer cannot run here, so the effect files are checked without it:
- statically: every import at file scope is from the standard library or Slicer itself;
- dynamically: importing a file in a fresh interpreter, with every non-Slicer third-party package
  blocked, fails only because a Slicer module is absent (never torch or SAM) and imports nothing
  heavy. No stand-in `slicer` / `qt` modules are injected: the first Slicer import stops the file,
  which is why the static check covers the rest of it.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from medicosam.effect.requirements import PIP_REQUIREMENTS, TORCH_MODULES
from medicosam.effect.settings import SHORTCUTS
from medicosam.models.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
SLICER_DIR = ROOT / "MedicoSAMSlicer"
SLICER_FILES = [SLICER_DIR / "SegmentEditorMedicoSAM.py",
                *sorted((SLICER_DIR / "SegmentEditorMedicoSAMLib").glob("*.py"))]
CORE_FILES = sorted((SLICER_DIR / "medicosam").rglob("*.py"))
#: Core modules the effect never runs: `medicosam serve` (its packages are the `[server]` extra).
NOT_RUN_BY_EFFECT = SLICER_DIR / "medicosam" / "server"
#: Modules only Slicer's Python provides.
SLICER_MODULES = {"slicer", "qt", "vtk", "ctk", "SegmentEditorEffects", "SampleData",
                  "qSlicerSegmentationsEditorEffectsPythonQt", "PyTorchUtils"}
#: Third-party packages the core may import that the effect never installs: Slicer ships numpy and
#: SimpleITK; tqdm draws the CLI's progress bars only.
NOT_INSTALLED_BY_EFFECT = {"numpy", "SimpleITK", "tqdm"}
#: Core modules the effect imports before it has installed anything (panel, parameters, model menu,
#: worker, errors): they must work with numpy alone.
EARLY_CORE_MODULES = ["medicosam.device", "medicosam.effect.settings", "medicosam.effect.requirements",
                      "medicosam.effect.worker", "medicosam.effect.controller", "medicosam.effect.extent",
                      "medicosam.effect.panel", "medicosam.effect.interaction", "medicosam.effect.links",
                      "medicosam.effect.history", "medicosam.models.download", "medicosam.geometry"]
HEAVY = ["torch", "torchvision", "segment_anything", "scipy", "skimage", "SimpleITK", "requests", "xxhash",
         "platformdirs", "tqdm"]

# Facts of Slicer's extension catalog entry schema v1.0.1 (Slicer/Slicer: Schemas/), restated.
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
CATALOG_REQUIRED = {"$schema", "category", "scm_url"}
CATALOG_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                 "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
CATALOG_ENUMS = {"scm_type": {"git", "local"}, "tier": {1, 3, 5}}
# Keywords of the legacy .s4ext description (Slicer's extension_description.s4ext.in).
S4EXT_REQUIRED = {"scm", "scmurl", "scmrevision", "depends", "build_subdirectory", "homepage", "contributors",
                  "category", "iconurl", "status", "description", "screenshoturls", "enabled"}
S4EXT_OPTIONAL = {"recommends", "tier", "dicom_support_rule", "keywords"}

BLOCKER = """
import importlib.abc, importlib.util, json, sys
blocked = set(json.loads(sys.argv[1]))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
sys.meta_path.insert(0, Blocker())
"""


def get_cmake_variables(path: Path) -> dict:
    return dict(re.findall(r'set\((\w+)\s+"([^"]*)"\)', path.read_text()))


def get_s4ext() -> dict:
    entries: dict = {}
    for line in (ROOT / "MedicoSAM.s4ext").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.strip().partition(" ")
            assert key not in entries, f"{key} appears twice in MedicoSAM.s4ext"
            entries[key] = value.strip()
    return entries


def get_project_name() -> str:
    return re.search(r"^project\((\w+)", (ROOT / "CMakeLists.txt").read_text(), re.M).group(1)


def get_repo_file(url: str) -> Path:
    """The file a raw.githubusercontent.com URL of this repository's main branch points to."""
    match = re.fullmatch(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/(.+)", url)
    assert match, f"{url} is not a raw GitHub URL on the main branch"
    return ROOT / match.group(1)


def test_catalog_entry_matches_the_schema_and_the_project():
    entry = json.loads((ROOT / "MedicoSAM.json").read_text())
    assert entry["$schema"] == CATALOG_SCHEMA
    assert CATALOG_REQUIRED <= set(entry) <= set(CATALOG_TYPES)
    for key, value in entry.items():
        assert type(value) is CATALOG_TYPES[key], f"{key} should be a {CATALOG_TYPES[key].__name__}"
        assert key not in CATALOG_ENUMS or value in CATALOG_ENUMS[key]
    assert all(isinstance(item, str) for item in entry.get("build_dependencies", []))
    name = get_project_name()
    assert name == "MedicoSAM" == Path("MedicoSAM.json").stem and not name.startswith("Slicer")
    cmake, s4ext = get_cmake_variables(ROOT / "CMakeLists.txt"), get_s4ext()
    assert entry["build_dependencies"] == cmake["EXTENSION_DEPENDS"].split() == s4ext["depends"].split()
    assert entry["category"] == cmake["EXTENSION_CATEGORY"] == s4ext["category"]
    assert (entry["scm_url"], entry["scm_revision"]) == (s4ext["scmurl"], s4ext["scmrevision"])
    assert re.fullmatch(r"https://github\.com/[^/]+/Slicer\w+\.git", entry["scm_url"])  # repo name starts with Slicer


def test_s4ext_has_every_field_and_agrees_with_cmake():
    s4ext, cmake = get_s4ext(), get_cmake_variables(ROOT / "CMakeLists.txt")
    assert S4EXT_REQUIRED <= set(s4ext) <= S4EXT_REQUIRED | S4EXT_OPTIONAL
    assert s4ext["scm"] == "git" and s4ext["enabled"] in ("0", "1") and s4ext["build_subdirectory"] == "."
    for key, variable in (("homepage", "EXTENSION_HOMEPAGE"), ("contributors", "EXTENSION_CONTRIBUTORS"),
                          ("description", "EXTENSION_DESCRIPTION"), ("iconurl", "EXTENSION_ICONURL"),
                          ("screenshoturls", "EXTENSION_SCREENSHOTURLS"), ("status", "EXTENSION_STATUS")):
        assert s4ext[key] == cmake[variable], f"{key} differs from {variable}"
    urls = [s4ext["scmurl"], s4ext["homepage"], s4ext["iconurl"], *s4ext["screenshoturls"].split()]
    assert all(url.startswith("https://") and "?" not in url for url in urls)  # no query parameters
    assert not any(";" in value for value in cmake.values())  # CMake splits a string at ";" into a list
    for url in s4ext["screenshoturls"].split():  # a screenshot is an image of the effect, not the icon
        assert url != s4ext["iconurl"] and get_repo_file(url).is_file()
    with Image.open(get_repo_file(s4ext["iconurl"])) as icon:
        assert (icon.format, icon.size) == ("PNG", (128, 128))


def test_cmake_builds_the_extension_and_installs_the_core_with_the_module():
    top = (ROOT / "CMakeLists.txt").read_text()
    for line in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})", "add_subdirectory(MedicoSAMSlicer)",
                 "include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in top
    cmake = get_cmake_variables(ROOT / "CMakeLists.txt")
    assert Path(cmake["EXTENSION_README_FILE"].replace("${CMAKE_CURRENT_SOURCE_DIR}", str(ROOT))).is_file()
    assert Path(cmake["EXTENSION_LICENSE_FILE"].replace("${CMAKE_CURRENT_SOURCE_DIR}", str(ROOT))).is_file()

    module = (SLICER_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule(" in module
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in module
    assert "${CMAKE_CURRENT_SOURCE_DIR}/medicosam/*.py" in module and "${MEDICOSAM_CORE_SCRIPTS}" in module
    listed = {line.strip().replace("${MODULE_NAME}", "SegmentEditorMedicoSAM") for line in module.splitlines()
              if re.fullmatch(r"\s*\$\{MODULE_NAME\}\S*\.(py|png)|\s*Resources/\S+", line)}
    assert listed == {str(path.relative_to(SLICER_DIR)) for path in SLICER_FILES} | {
        "SegmentEditorMedicoSAMLib/SegmentEditorEffect.png", "Resources/Icons/MedicoSAM.png"}
    assert all((SLICER_DIR / name).is_file() for name in listed)
    with Image.open(SLICER_DIR / "SegmentEditorMedicoSAMLib/SegmentEditorEffect.png") as icon:
        assert icon.format == "PNG" and icon.size[0] == icon.size[1] <= 64


@pytest.mark.parametrize("path", SLICER_FILES + CORE_FILES, ids=lambda p: str(p.relative_to(SLICER_DIR)))
def test_parses_as_python_39(path):
    source = path.read_text(encoding="utf-8")
    ast.parse(source, str(path), feature_version=(3, 9))
    compile(source, str(path), "exec")


def find_interpreter(minor: int):
    """A runnable python3.<minor> from PATH or pyenv, or None."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}"), *sorted(pyenv.glob(f"3.{minor}.*/bin/python"))]
    for candidate in filter(None, candidates):
        run = subprocess.run([str(candidate), "-c", "import sys; print(sys.version_info[1])"],
                             capture_output=True, text=True)
        if run.returncode == 0 and run.stdout.strip() == str(minor):
            return str(candidate)
    return None


@pytest.mark.parametrize("minor", [9, 10, 11, 12])
def test_compiles_with_slicers_pythons(minor, tmp_path):
    """Slicer 5.0-5.8 ship Python 3.9, 5.10+ ship 3.12: every Slicer file and the core must compile there."""
    interpreter = find_interpreter(minor)
    if interpreter is None:
        pytest.skip(f"python3.{minor} is not installed here (the feature_version=(3, 9) parse still ran)")
    script = "import sys\nfor path in sys.argv[1:]:\n    compile(open(path, encoding='utf-8').read(), path, 'exec')\n"
    run = subprocess.run([interpreter, "-c", script, *map(str, SLICER_FILES + CORE_FILES)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_slicer_files_import_only_stdlib_and_slicer_at_file_scope(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:  # file scope only: imports inside functions run on first use
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    allowed = SLICER_MODULES | set(sys.stdlib_module_names) | {"SegmentEditorMedicoSAMLib"}  # the effect's helpers
    assert names <= allowed, f"{path.name} imports {sorted(names - allowed)} at file scope"


@pytest.mark.parametrize("path", SLICER_FILES, ids=lambda p: p.name)
def test_importing_a_slicer_file_without_slicer_stops_at_a_slicer_module(path):
    package = path.parent.name == "SegmentEditorMedicoSAMLib"
    target = "SegmentEditorMedicoSAMLib" if path.name == "__init__.py" else \
        ("SegmentEditorMedicoSAMLib." if package else "") + path.stem
    script = BLOCKER + f"""
sys.path.insert(0, {str(SLICER_DIR)!r})
try:
    import {target}
    failed = None
except ModuleNotFoundError as error:
    failed = error.name
heavy = sorted(name for name in blocked if name in sys.modules)
print(json.dumps({{"failed": failed, "heavy": heavy}}))
"""
    run = subprocess.run([sys.executable, "-c", script, json.dumps(HEAVY)], capture_output=True, text=True,
                         cwd=ROOT)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["failed"] in SLICER_MODULES and result["heavy"] == []


def test_core_modules_used_before_installation_need_only_numpy():
    script = BLOCKER + f"""
import {", ".join(EARLY_CORE_MODULES)}
from medicosam.effect.settings import EffectSettings, get_model_choices
EffectSettings().to_parameters()
get_model_choices([])
print(sorted(name for name in sys.modules if name.split(".")[0] in blocked))
"""
    run = subprocess.run([sys.executable, "-c", script, json.dumps(HEAVY)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


@pytest.mark.skipif(sys.version_info < (3, 10), reason="needs sys.stdlib_module_names")
def test_effect_installs_every_package_the_core_imports():
    """A package the core imports that is neither installed by the effect nor shipped with Slicer
    would fail only inside Slicer, at the first click. SAM2's packages count: the effect installs them
    when a SAM2 model is chosen."""
    found = set()
    for path in CORE_FILES:
        if NOT_RUN_BY_EFFECT in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    third_party = found - set(sys.stdlib_module_names) - {"medicosam"}
    provided = set(PIP_REQUIREMENTS).union(*(family.requirements for family in FAMILIES.values()), TORCH_MODULES,
                                            NOT_INSTALLED_BY_EFFECT)
    assert third_party <= provided, f"add {sorted(third_party - provided)} to medicosam.effect.requirements"


def test_ruff_passes_on_the_slicer_directory():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", "--target-version", "py39", "MedicoSAMSlicer"],
                         capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr


def test_slicer_user_guide_covers_the_workflow():
    text = (ROOT / "docs" / "slicer.md").read_text(encoding="utf-8")
    headings = [line.lstrip("#").strip().lower() for line in text.splitlines() if line.startswith("#")]
    for topic in ("install", "first segmentation", "propagation", "correction", "model management",
                  "troubleshooting"):
        assert any(heading.startswith(topic) for heading in headings), f"docs/slicer.md has no '{topic}' section"
    for key in SHORTCUTS:
        assert f"| `{key}` |" in text, f"docs/slicer.md does not list the {key} shortcut"


def test_effect_help_links_the_user_guide_in_the_project_repository():
    """The extension ships no docs folder: the help text links the guide on the project's homepage."""
    effect = ast.parse((SLICER_DIR / "SegmentEditorMedicoSAMLib" / "SegmentEditorEffect.py").read_text())
    url = next(ast.literal_eval(node.value) for node in effect.body
               if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DOCS_URL")
    repository = get_s4ext()["homepage"].split("#")[0]
    assert url == f"{repository}/blob/main/docs/slicer.md" and (ROOT / "docs" / "slicer.md").is_file()


def test_ci_setup_states_its_facts_itself():
    """`.ci/setup` sent readers to the README for where pip takes torch from, which the README does not say;
    what the README does say about the setup (the pinned versions) must match it."""
    setup = (ROOT / ".ci" / "setup").read_text()
    comments = " ".join(line.lstrip("# ") for line in setup.splitlines() if line.startswith("#"))
    assert "README" not in comments and "find-links" in comments and "PyPI" in comments
    pins = re.findall(r'"(torch|torchvision)==([0-9.]+)"', setup)
    readme = (ROOT / "README.md").read_text()
    assert len(pins) == 2 and all(f"{name} {version}" in readme for name, version in pins)
