"""The selected segment's prompts as Slicer markups nodes.

A segment's + and - point lists and ROI are chosen in the panel (or made by the tools), its lassos and
scribbles are drawn; all are linked to the segment by node references on the segmentation node
(`medicosam.effect.links`). Any module may edit them: their events update the preview. They are read
as `medicosam.markups.Markups` in world RAS, and every prompt added is recorded for Undo prompt.
"""

import slicer
import vtk

from SegmentEditorMedicoSAMLib.SlicerHelpers import getNumpyMatrix

#: Events of a prompt node that change its prompts (by any module).
MARKUPS_EVENTS = (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLMarkupsNode.PointAddedEvent,
                  slicer.vtkMRMLMarkupsNode.PointRemovedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
                  slicer.vtkMRMLTransformableNode.TransformModifiedEvent)


class MarkupsPrompts:
    """The prompt nodes of the segment selected in the effect `effect`."""

    def __init__(self, effect):
        from medicosam.effect.history import PromptHistory

        self.effect = effect
        self.selectors, self.placeWidgets = {}, {}
        self.observations = []  # (node, observer tag)
        self.history = PromptHistory()
        self.stroke = None  # (role, curve node, segmentation node, segment ID) while a stroke is drawn
        self.roiBefore = None  # the ROI before the box drag in progress (`getRoiState`)

    # Links: node references on the segmentation node ---------------------------------------------

    def getSegment(self):
        """(segmentation node, segment ID) selected in the editor, or (None, None)."""
        parameterSetNode = self.effect.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        if segmentationNode is None or not parameterSetNode.GetSelectedSegmentID():
            return None, None
        return segmentationNode, parameterSetNode.GetSelectedSegmentID()

    def getNode(self, role, create=False):
        """The selected segment's node of a chosen role ("positive", "negative", "roi"); with `create`, a new
        one when it has none."""
        from medicosam.effect.links import get_reference_role

        segmentationNode, segmentId = self.getSegment()
        if segmentationNode is None:
            return self.createNode(role) if create else None  # createNode says what to select
        node = segmentationNode.GetNodeReference(get_reference_role(role, segmentId))
        if node is None and create:
            node = self.createNode(role)
            self.setNode(role, node)
        return node

    def getStrokes(self):
        """[(role, curve node)] of the selected segment's drawn lassos and scribbles."""
        from medicosam.effect.links import PROMPT_ROLES, get_reference_role

        segmentationNode, segmentId = self.getSegment()
        strokes = []
        for role, spec in PROMPT_ROLES.items():
            if segmentationNode is not None and spec.strokes:
                reference = get_reference_role(role, segmentId)
                strokes += [(role, segmentationNode.GetNthNodeReference(reference, n))
                            for n in range(segmentationNode.GetNumberOfNodeReferences(reference))]
        return [(role, node) for role, node in strokes if node is not None]

    def setNode(self, role, node):
        """Make `node` (None: none) the selected segment's node of a chosen role."""
        from medicosam.effect.links import get_reference_role

        segmentationNode, segmentId = self.getSegment()
        if segmentationNode is not None:
            reference = get_reference_role(role, segmentId)
            if node is None:
                segmentationNode.RemoveNodeReferenceIDs(reference)
            else:
                segmentationNode.SetNodeReferenceID(reference, node.GetID())
        self.updateSelectors()

    def createNode(self, role, negative=False):
        """A new prompt node of `role`, named after the selected segment, in the role's colour (a negative
        scribble's name says "negative", so a saved file keeps its sign)."""
        from medicosam.effect.links import NEGATIVE_SCRIBBLE, PROMPT_ROLES
        from medicosam.errors import InputError

        segmentationNode, segmentId = self.getSegment()
        if segmentationNode is None:
            raise InputError("Select a segmentation and a segment first.")
        spec = PROMPT_ROLES[role]
        name, color = NEGATIVE_SCRIBBLE if negative else (spec.name, spec.color)
        segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        node = slicer.mrmlScene.AddNewNodeByClass(spec.node_class,
                                                  slicer.mrmlScene.GenerateUniqueName(f"{name} {segmentName}"))
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(color)
        node.GetDisplayNode().SetColor(color)
        return node

    # Panel widgets -------------------------------------------------------------------------------

    def createWidgets(self):
        """[(label, layout)] of the chosen roles: a node selector (create, rename, delete, none), Slicer's
        place button, and for the ROI "New ROI" (a complete ROI's place button is disabled)."""
        import qt

        from medicosam.effect.links import CHOSEN_ROLES, PROMPT_ROLES

        rows = []
        for role in CHOSEN_ROLES:
            spec = PROMPT_ROLES[role]
            selector = slicer.qMRMLNodeComboBox()
            selector.nodeTypes = [spec.node_class]
            selector.addEnabled = selector.renameEnabled = selector.removeEnabled = selector.noneEnabled = True
            selector.baseName = spec.name
            selector.setMRMLScene(slicer.mrmlScene)
            selector.setToolTip("The segment's " + ("ROI" if role == "roi" else f"{role} point list") +
                                "; linked to the segment and saved with the scene.")
            placeWidget = slicer.qSlicerMarkupsPlaceWidget()
            placeWidget.setMRMLScene(slicer.mrmlScene)
            placeWidget.buttonsVisible = False
            placeWidget.placeButton().show()
            placeWidget.placeMultipleMarkups = (placeWidget.ForcePlaceSingleMarkup if role == "roi"
                                                else placeWidget.ForcePlaceMultipleMarkups)
            layout = qt.QHBoxLayout()
            layout.addWidget(selector)
            layout.addWidget(placeWidget)
            if role == "roi":
                newButton = qt.QPushButton("New ROI")
                newButton.setToolTip("Give the segment a new ROI and place it now (two clicks: opposite corners); "
                                     "the old one stays in the scene.")
                layout.addWidget(newButton)
                self.effect.connectSignal(newButton, "clicked()", self.onNewRoi)
            self.effect.connectSignal(selector, "currentNodeChanged(vtkMRMLNode*)",
                                      lambda node, role=role: self.onNodeSelected(role, node))
            self.selectors[role], self.placeWidgets[role] = selector, placeWidget
            rows.append((spec.label, layout))
        return rows

    def updateSelectors(self):
        """Selectors and place buttons show the selected segment's nodes, and only its nodes are observed."""
        for role, selector in self.selectors.items():
            node = self.getNode(role)
            wasBlocked = selector.blockSignals(True)
            selector.setCurrentNode(node)
            selector.blockSignals(wasBlocked)
            self.placeWidgets[role].setCurrentNode(node)
            self.placeWidgets[role].enabled = node is not None
        self.observe()

    def onNodeSelected(self, role, node):
        if node is not None:
            node.CreateDefaultDisplayNodes()  # a node made by the selector has none yet
        self.setNode(role, node)
        self.effect.scheduleMarkupsUpdate()

    def onNewRoi(self):
        with self.effect.reportingErrors():
            self.setNode("roi", self.createNode("roi"))
            self.placeWidgets["roi"].setPlaceModeEnabled(True)

    # Observation ---------------------------------------------------------------------------------

    def observe(self):
        from medicosam.effect.links import CHOSEN_ROLES

        self.unobserve()
        for role in CHOSEN_ROLES:
            markupsNode = self.getNode(role)
            if markupsNode is None:
                continue
            self.observations += [(markupsNode, markupsNode.AddObserver(event, self.onEvent))
                                  for event in MARKUPS_EVENTS]
            if role != "roi":
                self.observations.append((markupsNode, markupsNode.AddObserver(
                    slicer.vtkMRMLMarkupsNode.PointAddedEvent, self.onPointAdded)))
        for _, markupsNode in self.getStrokes():
            self.observations += [(markupsNode, markupsNode.AddObserver(event, self.onEvent))
                                  for event in MARKUPS_EVENTS]

    def unobserve(self):
        for markupsNode, tag in self.observations:
            markupsNode.RemoveObserver(tag)
        self.observations = []

    def onEvent(self, caller, event):
        self.effect.scheduleMarkupsUpdate()

    def onPointAdded(self, caller, event):
        """A control point added to a + / - list, by any module: the newest prompt (it is added last)."""
        from medicosam.effect.history import PromptStep

        pointId = caller.GetNthControlPointID(caller.GetNumberOfControlPoints() - 1)
        self.history.push(self.effect.getSessionKey(), PromptStep("point", caller.GetID(), pointId))

    # Reading -------------------------------------------------------------------------------------

    def read(self):
        """The selected segment's `markups.Markups`, in world RAS (transforms hold)."""
        return self.readWithNodes()[0]

    def readWithNodes(self):
        """(`markups.Markups`, [(node, index)] of its points, [node] of its curves): which node holds what.

        Points are signed by their list, its name, their label or description; a lasso is positive, a
        scribble negative when its name says so; points still being placed are left out."""
        from medicosam.markups import (
            Markups,
            MarkupsCurve,
            MarkupsPoint,
            get_roi_from_matrix,
            is_negative_list,
            is_negative_point,
        )

        points, entries = [], []
        for role in ("positive", "negative"):
            markupsNode = self.getNode(role)
            for n, position in getDefinedPositions(markupsNode):
                negative = role == "negative" or is_negative_point(
                    markupsNode.GetName(), markupsNode.GetNthControlPointLabel(n),
                    markupsNode.GetNthControlPointDescription(n))
                points.append(MarkupsPoint(position, not negative))
                entries.append((markupsNode, n))
        rois = []
        roiNode = self.getNode("roi")
        if roiNode is not None:
            roi = get_roi_from_matrix(slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToWorldMatrix()),
                                      roiNode.GetSize())
            rois += [roi] if roi is not None else []
        curves, strokeNodes = [], []
        for role, markupsNode in self.getStrokes():
            positions = tuple(position for _, position in getDefinedPositions(markupsNode))
            if len(positions) >= (3 if role == "lasso" else 1):  # a lasso needs an inside
                negative = role == "scribble" and is_negative_list(markupsNode.GetName())
                curves.append(MarkupsCurve(positions, role == "lasso", not negative))
                strokeNodes.append(markupsNode)
        return Markups(points, rois, curves), entries, strokeNodes

    # Editing -------------------------------------------------------------------------------------

    def addPoint(self, tool, ras):
        from medicosam.effect.interaction import TOOL_PROMPTS

        self.getNode(TOOL_PROMPTS[tool][0], create=True).AddControlPointWorld(*ras)

    def startBox(self):
        self.roiBefore = self.getRoiState()

    def setRoiFromDrag(self, startRas, endRas, sliceNode):
        """Set the segment's ROI to the dragged box: on the drag's slice, with the view's axes."""
        from medicosam.effect.extent import get_extent_shape
        from medicosam.markups import get_roi_from_drag, get_roi_from_matrix

        source = self.effect.scriptedEffect.sourceVolumeImageData()
        if source is None:
            self.effect.showStatus("Select a source volume first.")
            return
        _, ijkToRas, extent = self.effect.getSourceGeometry(source)
        sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        roi = get_roi_from_drag(startRas, endRas, sliceToRas, ijkToRas, get_extent_shape(extent))
        roiNode = self.getNode("roi", create=True)
        transformNode = roiNode.GetParentTransformNode()
        if transformNode is not None:  # the ROI node's own frame
            roi = get_roi_from_matrix(getNumpyMatrix(transformNode.GetMatrixTransformFromWorld) @ roi.get_matrix(),
                                      roi.size)
        with slicer.util.NodeModify(roiNode):
            roiNode.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(roi.get_matrix()))
            roiNode.SetSize(*roi.size)

    def finishBox(self, dragged):
        """A box drag ended: a drawn box is one prompt, which Undo prompt takes back to the ROI before."""
        from medicosam.effect.history import PromptStep

        roiNode = self.getNode("roi")
        if dragged and roiNode is not None:
            step = PromptStep("roi", roiNode.GetID(), roi_before=self.roiBefore)
            self.history.push(self.effect.getSessionKey(), step)
        self.roiBefore = None

    def getRoiState(self):
        """The segment's ROI as (object-to-node matrix, size), None when it has none or it is empty."""
        roiNode = self.getNode("roi")
        if roiNode is None or not any(roiNode.GetSize()):
            return None
        matrix = slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix())
        return tuple(float(value) for value in matrix.ravel()), tuple(roiNode.GetSize())

    def startStroke(self, tool, ras):
        """Start drawing a lasso or scribble at `ras`: a new curve node, shown as drawn (straight segments)."""
        from medicosam.effect.interaction import TOOL_PROMPTS

        role, positive = TOOL_PROMPTS[tool]
        node = self.createNode(role, negative=not positive)
        node.SetCurveTypeToLinear()
        node.GetDisplayNode().PointLabelsVisibilityOff()
        node.AddControlPointWorld(*ras)
        self.stroke = (role, node, *self.getSegment())

    def extendStroke(self, ras):
        self.stroke[1].AddControlPointWorld(*ras)

    def finishStroke(self):
        """Link the drawn stroke to the segment it was drawn for (selected at its start); a lasso of fewer
        than 3 points is dropped. Returns whether it was kept."""
        from medicosam.effect.history import PromptStep
        from medicosam.effect.links import get_reference_role

        role, node, segmentationNode, segmentId = self.stroke
        self.stroke = None
        if node.GetNumberOfControlPoints() < (3 if role == "lasso" else 1):
            slicer.mrmlScene.RemoveNode(node)
            return False
        segmentationNode.AddNodeReferenceID(get_reference_role(role, segmentId), node.GetID())
        self.history.push((segmentationNode.GetID(), segmentId), PromptStep("stroke", node.GetID()))
        self.observe()
        return True

    def clearSlice(self, session):
        """Delete what prompts the session's current slice alone: its control points and strokes, and the ROI
        when it is a box on that slice only (emptied: it stays the segment's ROI)."""
        from medicosam.markups import get_markups_on_slice

        markups, entries, strokeNodes = self.readWithNodes()
        points, rois, curves = get_markups_on_slice(markups, session.ijk_to_ras, session.shape, *session.current)
        for number in sorted(points, key=lambda number: -entries[number][1]):  # last index first
            entries[number][0].RemoveNthControlPoint(entries[number][1])
        if rois:
            self.getNode("roi").SetSize(0.0, 0.0, 0.0)
        self.removeStrokes([strokeNodes[number] for number in curves])

    def removeAll(self):
        """Delete every prompt of the segment: the lists' points, the ROI's box, the strokes."""
        for role in ("positive", "negative"):
            markupsNode = self.getNode(role)
            if markupsNode is not None:
                markupsNode.RemoveAllControlPoints()
        roiNode = self.getNode("roi")
        if roiNode is not None:
            roiNode.SetSize(0.0, 0.0, 0.0)
        self.removeStrokes([node for _, node in self.getStrokes()])
        self.history.forget(self.effect.getSessionKey())

    def removeStrokes(self, nodes):
        self.unobserve()
        for node in nodes:
            slicer.mrmlScene.RemoveNode(node)  # its references go with it
        self.observe()

    def undoLast(self):
        """Take back the segment's newest prompt that still exists; False when none is left."""
        step = self.history.pop(self.effect.getSessionKey(), self.exists)
        if step is None:
            return False
        node = slicer.mrmlScene.GetNodeByID(step.node_id)
        if step.kind == "point":
            node.RemoveNthControlPoint(node.GetNthControlPointIndexByID(step.point_id))
        elif step.kind == "stroke":
            self.removeStrokes([node])
        elif step.roi_before is None:
            node.SetSize(0.0, 0.0, 0.0)
        else:
            import numpy as np

            matrix, size = step.roi_before
            with slicer.util.NodeModify(node):
                node.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(np.reshape(matrix, (4, 4))))
                node.SetSize(*size)
        return True

    @staticmethod
    def exists(step):
        """Whether a recorded prompt is still there (its node, and for a point the point)."""
        node = slicer.mrmlScene.GetNodeByID(step.node_id)
        return node is not None and (step.kind != "point" or node.GetNthControlPointIndexByID(step.point_id) >= 0)


def getDefinedPositions(markupsNode):
    """[(index, world RAS)] of a markups node's control points whose position is defined (none for None)."""
    found = []
    for n in range(markupsNode.GetNumberOfControlPoints() if markupsNode is not None else 0):
        if markupsNode.GetNthControlPointPositionStatus(n) == slicer.vtkMRMLMarkupsNode.PositionDefined:
            position = [0.0, 0.0, 0.0]
            markupsNode.GetNthControlPointPositionWorld(n, position)
            found.append((n, tuple(position)))
    return found
