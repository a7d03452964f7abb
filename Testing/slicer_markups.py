"""Markups files as Slicer 5.x writes them (`vtkMRMLMarkupsJsonStorageNode`, `...ROIJsonStorageNode`).

Every field Slicer writes is there, in its order and types: LPS by default, `position` as "" for a point
that is not defined, the ROI's orientation as a row-major matrix with its first two rows negated in LPS.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
          "markups-schema-v1.0.3.json#")
_FLIP = np.array([-1.0, -1.0, 1.0])


def _display() -> dict:
    return {"visibility": True, "opacity": 1.0, "color": [0.4, 1.0, 1.0], "selectedColor": [1.0, 0.5, 0.5],
            "activeColor": [0.4, 1.0, 0.0], "propertiesLabelVisibility": True, "pointLabelsVisibility": True,
            "textScale": 3.0, "glyphType": "Sphere3D", "glyphScale": 3.0, "glyphSize": 5.0,
            "useGlyphScale": True, "sliceProjection": False, "sliceProjectionUseFiducialColor": True,
            "sliceProjectionOutlinedBehindSlicePlane": False, "sliceProjectionColor": [1.0, 1.0, 1.0],
            "sliceProjectionOpacity": 0.6, "lineThickness": 0.2, "lineColorFadingStart": 1.0,
            "lineColorFadingEnd": 10.0, "lineColorFadingSaturation": 1.0, "lineColorFadingHueOffset": 0.0,
            "handlesInteractive": False, "translationHandleVisibility": True, "rotationHandleVisibility": True,
            "scaleHandleVisibility": True, "interactionHandleScale": 3.0, "snapMode": "toVisibleSurface"}


def _control_point(n: int, position_ras, system: str, label: str, description: str = "",
                   status: str = "defined") -> dict:
    flip = _FLIP if system == "LPS" else np.ones(3)
    orientation = np.eye(3).ravel() * (np.r_[-np.ones(6), np.ones(3)] if system == "LPS" else 1.0)
    return {"id": str(n + 1), "label": label, "description": description, "associatedNodeID": "",
            "position": (np.asarray(position_ras, float) * flip).tolist() if status == "defined" else "",
            "orientation": orientation.tolist(), "selected": True, "locked": False, "visibility": True,
            "positionStatus": status}


def write_point_list(path: Path, points_ras: Sequence[Sequence[float]], system: str = "LPS",
                     labels: Optional[Sequence[str]] = None, descriptions: Optional[Sequence[str]] = None,
                     statuses: Optional[Sequence[str]] = None) -> Path:
    """A point list (`type` Fiducial) file, as Slicer's Save Data writes it."""
    n = len(points_ras)
    labels = labels or [f"F-{i + 1}" for i in range(n)]
    descriptions = descriptions or [""] * n
    statuses = statuses or ["defined"] * n
    markup = {"type": "Fiducial", "coordinateSystem": system, "coordinateUnits": "mm", "locked": False,
              "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": n,
              "controlPoints": [_control_point(i, p, system, lb, d, s) for i, (p, lb, d, s)
                                in enumerate(zip(points_ras, labels, descriptions, statuses))],
              "measurements": [], "display": _display()}
    path.write_text(json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=4))
    return path


def write_roi(path: Path, center_ras: Sequence[float], size: Sequence[float], axes_ras=None,
              system: str = "LPS") -> Path:
    """A box ROI file; `axes_ras` is the 3x3 rotation whose columns are the ROI's axes in RAS."""
    axes = np.eye(3) if axes_ras is None else np.asarray(axes_ras, float)
    flip = _FLIP if system == "LPS" else np.ones(3)
    markup = {"type": "ROI", "coordinateSystem": system, "coordinateUnits": "mm", "locked": False,
              "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": 1,
              "roiType": "Box", "center": (np.asarray(center_ras, float) * flip).tolist(),
              "orientation": (axes * flip[:, None]).ravel().tolist(), "size": [float(s) for s in size],
              "insideOut": False,
              "controlPoints": [_control_point(0, center_ras, system, "R")],
              "measurements": [{"name": "volume", "enabled": False, "units": "cm3", "printFormat": "%-#4.4g%s"}],
              "display": _display()}
    path.write_text(json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=4))
    return path


def write_curve(path: Path, points_ras: Sequence[Sequence[float]], closed: bool, system: str = "LPS") -> Path:
    """A curve (`type` Curve, a scribble) or closed curve (ClosedCurve, a lasso) file: the point list's
    fields, and the measurements Slicer lists for curves (disabled by default)."""
    n = len(points_ras)
    measurements = [{"name": "length", "enabled": False, "units": "mm", "printFormat": "%-#4.4g%s"}]
    if closed:
        measurements.append({"name": "area", "enabled": False, "units": "cm2", "printFormat": "%-#4.4g%s"})
    markup = {"type": "ClosedCurve" if closed else "Curve", "coordinateSystem": system, "coordinateUnits": "mm",
              "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d",
              "lastUsedControlPointNumber": n,
              "controlPoints": [_control_point(i, p, system, f"CC-{i + 1}" if closed else f"OC-{i + 1}")
                                for i, p in enumerate(points_ras)],
              "measurements": measurements, "display": _display()}
    path.write_text(json.dumps({"@schema": SCHEMA, "markups": [markup]}, indent=4))
    return path
