"""MedicoSAM Segment Editor effect: the thin Slicer layer over `medicosam.effect`.

Slicer cannot run in the project's tests, so the Slicer files keep only what needs Slicer; every decision
(which model to keep, which slice a prompt lands on, what a press does, what to propagate, what to write)
is in `medicosam.effect` and tested without Slicer. The effect is split like Slicer's own effects:
- this class: the effect API, view interaction (clicks, box drags, drawn strokes) and the actions;
- `OptionsPanel`: the widgets, bound to settings fields by one table (`medicosam.effect.panel.ROWS`);
- `MarkupsPrompts`: the segment's prompt nodes (+ / - point lists, ROI, lassos, scribbles), linked by node
  references on the segmentation node, observed, read as markups, and the history behind Undo prompt;
- `PreviewDisplay`: the preview overlay; `Dependencies`: installs, downloads and deleting weights.
The `EffectController` owns the model, predictor and sessions and runs them on the inference worker; the
effect writes what a session returns through `modifySelectedSegmentByLabelmap` after one
`saveStateForUndo`. Nothing heavy is imported at file scope: torch and SAM are imported on first use,
after the user agreed to install them. With "Run on: server" the model runs in `medicosam serve`.
"""

import contextlib
import functools
import logging
import os
import time

import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from SegmentEditorMedicoSAMLib.Dependencies import Dependencies
from SegmentEditorMedicoSAMLib.MarkupsPrompts import MarkupsPrompts
from SegmentEditorMedicoSAMLib.OptionsPanel import OptionsPanel
from SegmentEditorMedicoSAMLib.PreviewDisplay import PreviewDisplay
from SegmentEditorMedicoSAMLib.SlicerHelpers import (
    closeDialog,
    createProgressDialog,
    getImageArray,
    getNumpyMatrix,
    getShortcutKeys,
)

MARKUPS_DELAY_MS = 100  # markups events within this time (a point being dragged) make one update
BUSY_DIALOG_DELAY_MS = 400
DOCS_URL = "https://github.com/MedicoSAM/SlicerMedicoSAM/blob/main/docs/slicer.md"


class Drag:
    """A box or a stroke being drawn with the left button held, in one slice view."""

    def __init__(self, kind, xy, ras, sliceNodeId):
        self.kind, self.startXy, self.startRas, self.sliceNodeId = kind, xy, ras, sliceNodeId
        self.lastXy = xy


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment with SAM prompts (points, box, lasso, scribble), preview, apply, propagate through the volume."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedicoSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        from medicosam.effect.controller import EffectController

        self.controller = EffectController(self.runBlocking, self.clearDisplay)  # model, predictor, sessions
        self.markups = MarkupsPrompts(self)
        self.preview = PreviewDisplay(scriptedEffect)
        self.dependencies = Dependencies(self)
        self.panel = None  # the OptionsPanel, made with the options frame
        self.pending = []  # [(future, callback)] of preview jobs, polled on the GUI thread
        self.busy = False  # a blocking job (apply, propagate, model loading) is running
        self.drag = None  # the Drag in progress
        self.promptSliceNodeId = None  # the slice view last clicked in: its orientation picks the slices
        self.boundSegmentKey = None  # the segment the panel, observers and preview follow
        self.parameterSetObservation = None  # (segment editor node, observer tag) while active
        self.markupsFuture = None  # the markups update running on the worker
        self.sessionToken = ""  # the server token when it is not remembered in Slicer's settings
        self.shortcuts = []
        self.connections = []  # (object, signal, slot), disconnected in cleanup (Slicer issue #7392)
        self.pollTimer = None  # created with the options frame, so it dies with it
        self.markupsTimer = None

    def clone(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), "SegmentEditorEffect.png")
        return qt.QIcon(iconPath) if os.path.exists(iconPath) else qt.QIcon()

    def helpText(self):
        key = getShortcutKeys()
        return f"""<html>Segment with MedicoSAM (Segment Anything for medical images), in a Red, Green or Yellow
view aligned with the volume.<br>
<b>+ Point</b> ({key["positive"]}) / <b>- Point</b> ({key["negative"]}): click inside / outside the object.
<b>Box</b> ({key["box"]}): drag a box around it. <b>Lasso</b> ({key["lasso"]}): draw a closed contour around it.
<b>Scribble</b> ({key["scribble"]}): draw a stroke inside it (- Scribble: over the background).
{key["flip"]} flips + and -. The prompts are the segment's markups (point lists, ROI, curves): move a point by
dragging it, delete it with the Markups toolbar or module; the preview follows every change.<br>
<b>Apply</b> ({key["apply"]}) writes the previewed slice; <b>Propagate</b> ({key["propagate"]}, or down / both / up)
segments the neighbouring slices; <b>Segment in ROI</b> segments every slice the ROI covers. Writes change the
segment only where the prompts and propagation reach. <b>Undo prompt</b> ({key["undo_prompt"]}) takes back the
newest prompt, <b>Clear</b> ({key["clear"]}) the slice's, <b>Reset</b> ({key["reset"]}) all of them;
<b>New segment</b> ({key["new_segment"]}); Undo (Ctrl+Z) works as for any effect; Esc leaves the effect.
See the <a href="{DOCS_URL}">user guide</a>.</html>"""

    # Effect API ----------------------------------------------------------------------------------

    def cleanup(self):
        """Called by Slicer 5.10+ before deleting the effect; older versions only delete the options frame,
        whose destroyed() signal runs `releaseResources`."""
        for sender, signal, slot in self.connections:
            sender.disconnect(signal, slot)
        self.connections = []
        self.removeShortcuts()
        self.releaseResources()

    def releaseResources(self):
        """Stop the worker thread, remove the preview node, free the model, volume copies and embeddings."""
        self.pending = []
        self.markups.unobserve()
        self.unobserveParameterSetNode()
        self.controller.release()
        self.preview.remove()

    def activate(self):
        self.preview.create()
        self.installShortcuts()
        self.refreshModelChoices()
        self.observeParameterSetNode()
        self.onSegmentChanged()
        self.pollTimer.start()

    def deactivate(self):
        self.pollTimer.stop()
        self.markupsTimer.stop()
        self.unobserveParameterSetNode()
        self.markups.unobserve()
        self.removeShortcuts()
        self.preview.remove()
        self.endDrag()
        self.controller.stop_prefetch()

    def setupOptionsFrame(self):
        self.panel = OptionsPanel(self)
        self.panel.build()
        optionsFrame = self.scriptedEffect.optionsFrame()
        self.pollTimer = qt.QTimer(optionsFrame)
        self.pollTimer.setInterval(50)
        self.connectSignal(self.pollTimer, "timeout()", self.onPoll)
        self.markupsTimer = qt.QTimer(optionsFrame)
        self.markupsTimer.setSingleShot(True)
        self.markupsTimer.setInterval(MARKUPS_DELAY_MS)
        self.connectSignal(self.markupsTimer, "timeout()", self.onMarkupsChanged)
        optionsFrame.connect("destroyed()", self.releaseResources)

    def connectSignal(self, sender, signal, slot):
        sender.connect(signal, slot)
        self.connections.append((sender, signal, slot))

    def setMRMLDefaults(self):
        from medicosam.effect.settings import EffectSettings

        for name, value in EffectSettings.get_parameter_defaults(self.readParameter).items():
            self.scriptedEffect.setParameterDefault(name, value)

    def readParameter(self, name):
        """The parameter's string, "" when the node has none (a scene saved before it existed)."""
        return self.scriptedEffect.parameter(name) if self.scriptedEffect.parameterDefined(name) else ""

    def sourceVolumeNodeChanged(self):
        self.controller.forget()

    def referenceGeometryChanged(self):
        self.controller.forget()

    def updateGUIFromMRML(self):
        if self.panel is not None:
            self.panel.update(self.getSettings())

    def updateMRMLFromGUI(self):
        """Every widget into the settings (the panel writes each change as it happens)."""
        from medicosam.effect.panel import set_value

        settings = self.getSettings()
        for field in self.panel.rows:
            settings = set_value(settings, field, self.panel.read(field))
        self.writeSettings(settings)

    def onOptionChanged(self, field):
        """A widget of the panel changed: write its field (a bad value says why and is shown back)."""
        from medicosam.effect.panel import set_value

        with self.reportingErrors():
            self.writeSettings(set_value(self.getSettings(), field, self.panel.read(field)))
        self.updateGUIFromMRML()  # the server settings are no scene parameter: nothing else redraws them

    # The selected segment --------------------------------------------------------------------------

    def observeParameterSetNode(self):
        """The selected segment is a plain string on the segment editor node, not an effect parameter:
        its changes (the segment list, Q / W, another module) come as the node's Modified events."""
        self.unobserveParameterSetNode()
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        if parameterSetNode is not None:
            self.parameterSetObservation = (parameterSetNode, parameterSetNode.AddObserver(
                vtk.vtkCommand.ModifiedEvent, self.onParameterSetNodeModified))

    def unobserveParameterSetNode(self):
        if self.parameterSetObservation is not None:
            parameterSetNode, tag = self.parameterSetObservation
            parameterSetNode.RemoveObserver(tag)
            self.parameterSetObservation = None

    def onParameterSetNodeModified(self, caller, event):
        if self.getSessionKey() != self.boundSegmentKey:
            self.onSegmentChanged()

    def onSegmentChanged(self):
        """Another segment (or segmentation) is selected: the selectors, place buttons, observers and preview
        follow it, and its markups are handed to its session (they may have changed meanwhile)."""
        self.endDrag()  # a stroke cut short stays with the segment it was drawn for
        self.boundSegmentKey = self.getSessionKey()
        self.controller.stop_prefetch()
        self.clearDisplay()
        self.markups.updateSelectors()
        self.scheduleMarkupsUpdate()

    def getSessionKey(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        if segmentationNode is None or not parameterSetNode.GetSelectedSegmentID():
            return None
        return segmentationNode.GetID(), parameterSetNode.GetSelectedSegmentID()

    # View interaction ------------------------------------------------------------------------------

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        xy = callerInteractor.GetEventPosition()
        sliceNodeId = viewWidget.mrmlSliceNode().GetID()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self.promptSliceNodeId = sliceNodeId  # also for points placed with Slicer's place mode
            return self.onPress(callerInteractor, xy, viewWidget)
        if self.drag is None or self.drag.sliceNodeId != sliceNodeId:
            return False
        if eventId == vtk.vtkCommand.MouseMoveEvent:
            self.onDragMove(xy, viewWidget)
            return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            self.onDragEnd(xy, viewWidget)
            return True
        return False

    def onPress(self, callerInteractor, xy, viewWidget):
        """Take a left press when it is the tool's prompt (`interaction.get_press_action`): place mode, a
        modifier key and a press on a hovered markup point or handle (to drag it) are left to Slicer."""
        from medicosam.effect.interaction import get_press_action

        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        tool = self.getSettings().tool
        action = get_press_action(
            tool, place_mode=interactionNode.GetCurrentInteractionMode() != interactionNode.ViewTransform,
            modified=bool(callerInteractor.GetShiftKey() or callerInteractor.GetControlKey()
                          or callerInteractor.GetAltKey()),
            on_markup=isMarkupHovered(), busy=self.busy)
        if action == "slicer":
            return False
        if action == "wait" or not self.confirmSegmentVisible(withDialog=False):
            return True  # a dialog took the release event: no prompt starts
        ras = self.xyToRas(xy, viewWidget)
        with self.reportingErrors():
            if action == "point":
                self.markups.addPoint(tool, ras)
            elif action == "box":
                self.markups.startBox()
                self.drag = Drag("box", xy, ras, viewWidget.mrmlSliceNode().GetID())
            else:
                self.markups.startStroke(tool, ras)
                self.drag = Drag("stroke", xy, ras, viewWidget.mrmlSliceNode().GetID())
        return True

    def onDragMove(self, xy, viewWidget):
        from medicosam.effect.interaction import STROKE_STEP_PIXELS
        from medicosam.errors import MedicoSAMError

        drag = self.drag
        if drag.kind == "stroke":
            if max(abs(xy[0] - drag.lastXy[0]), abs(xy[1] - drag.lastXy[1])) >= STROKE_STEP_PIXELS:
                self.markups.extendStroke(self.xyToRas(xy, viewWidget))
                drag.lastXy = xy
            return
        if isDragged(drag, xy):
            try:
                self.markups.setRoiFromDrag(drag.startRas, self.xyToRas(xy, viewWidget), viewWidget.mrmlSliceNode())
            except MedicoSAMError as error:  # no dialog inside a drag: the status says it, the drag ends
                self.markups.finishBox(dragged=True)
                self.drag = None
                self.showStatus(str(error))

    def onDragEnd(self, xy, viewWidget):
        if self.drag.kind == "stroke":
            self.drag = None
            self.markups.extendStroke(self.xyToRas(xy, viewWidget))
            if not self.markups.finishStroke():
                self.showStatus("Draw a larger contour: a lasso needs 3 points or more.")
        else:
            self.onDragMove(xy, viewWidget)  # the box ends where the button is released
            if self.drag is not None:
                dragged = isDragged(self.drag, xy)
                self.drag = None
                self.markups.finishBox(dragged)
                if not dragged:
                    self.showStatus("Drag to draw a box: a click is too small for one.")
        self.scheduleMarkupsUpdate()

    def endDrag(self):
        """End a box or stroke cut short (the effect or the segment changed): what was drawn is kept (a box
        cut short is not recorded for Undo prompt: the segment it was drawn for may be gone from view)."""
        drag, self.drag = self.drag, None
        if drag is not None and drag.kind == "stroke":
            self.markups.finishStroke()
        elif drag is not None:
            self.markups.finishBox(dragged=False)

    def interactionNodeModified(self, interactionNode):
        """Stay active in Slicer's place mode (the base class would deactivate the effect): placing the
        segment's points with the Markups toolbar or a place button is one way to prompt."""

    # Actions -----------------------------------------------------------------------------------------

    def onAction(self, action):
        """A button or shortcut (`settings.SHORTCUTS`, `OptionsPanel`): a tool's name selects it."""
        from medicosam.effect.settings import TOOLS

        if action in TOOLS:
            self.setTool(action)
            return
        handlers = {"flip": self.flipPolarity, "apply": self.onApply, "propagate": self.onPropagate,
                    "propagate_down": lambda: self.onPropagate("down"),
                    "propagate_both": lambda: self.onPropagate("both"),
                    "propagate_up": lambda: self.onPropagate("up"), "clear": self.onClear,
                    "undo_prompt": self.onUndoPrompt, "reset": self.onReset, "refine": self.toggleRefine,
                    "new_segment": self.onNewSegment, "segment_in_roi": self.onSegmentInRoi,
                    "load_model": self.onLoadModel, "delete_models": self.dependencies.deleteModels,
                    "test_connection": self.onTestConnection}
        handlers[action]()

    def setTool(self, tool):
        import dataclasses

        slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()  # the tool takes clicks
        self.writeSettings(dataclasses.replace(self.getSettings(), tool=tool))

    def flipPolarity(self):
        """+ Point <-> - Point, + Scribble <-> - Scribble."""
        from medicosam.effect.interaction import FLIPPED_TOOLS

        tool = self.getSettings().tool
        if tool in FLIPPED_TOOLS:
            self.setTool(FLIPPED_TOOLS[tool])
        else:
            self.showStatus("A box and a lasso are positive only: pick a point or scribble tool to flip.")

    def toggleRefine(self):
        import dataclasses

        settings = self.getSettings()
        self.writeSettings(dataclasses.replace(settings, refine=not settings.refine))

    def confirmSegmentVisible(self, withDialog=True):
        """Ask to show the segment if it is hidden, as Slicer's own effects do before they change it; a
        press answered with a dialog starts no prompt (`withDialog` False)."""
        confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
        if confirmed == self.scriptedEffect.NotConfirmed:
            return False
        return withDialog or confirmed != self.scriptedEffect.ConfirmedWithDialog

    def onApply(self):
        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is not None and self.confirmSegmentVisible():
                self.writeRequest(self.runBlocking(session.apply, "Applying the preview..."))

    def onClear(self):
        """Delete the current slice's prompts from the segment's markups (the markups are the prompts, so
        clearing the session alone would not last)."""
        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is not None and session.current is not None:
                self.markups.clearSlice(session)
                self.runBlocking(session.clear_prompts, "Clearing prompts...")
            self.clearDisplay()

    def onUndoPrompt(self):
        with self.reportingErrors():
            if self.markups.undoLast():
                self.scheduleMarkupsUpdate()
            else:
                self.showStatus("No prompt of this segment is left to undo (Ctrl+Z undoes writes).")

    def onReset(self):
        """Delete every prompt of the segment and forget its session: the segment starts over (its voxels
        stay: Undo or the Erase effect remove them)."""
        with self.reportingErrors():
            key = self.getSessionKey()
            if key is None:
                self.showStatus("Select a segmentation and a segment first.")
                return
            self.markups.removeAll()
            self.controller.forget_segment(key)
            self.clearDisplay()
            self.showStatus("Every prompt of the segment was deleted; its voxels stay as they are.")

    def onNewSegment(self):
        """Add an empty segment after the selected one and select it (the tool stays)."""
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        if segmentationNode is None:
            self.showStatus("Select a segmentation first.")
            return
        segmentation = segmentationNode.GetSegmentation()
        selected = parameterSetNode.GetSelectedSegmentID()
        index = segmentation.GetSegmentIndex(selected) + 1 if selected else segmentation.GetNumberOfSegments()
        segmentId = segmentation.AddEmptySegment()
        segmentation.SetSegmentIndex(segmentId, index)
        parameterSetNode.SetSelectedSegmentID(segmentId)  # observed: the effect follows it

    def onPropagate(self, direction=None):
        """Propagate along the Direction setting, or `direction` ("down", "both", "up": a button) this once."""
        from medicosam.effect.controller import get_propagation_config

        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is None or not self.confirmSegmentVisible():
                return
            config = get_propagation_config(session, self.getSettings(), self.markups.read().rois,
                                            self.getPromptViewNormal(), direction)
            segment = self.getSelectedSegmentArray()
            self.runCancellableWrite(
                lambda progress: session.propagate(config, segment, progress.report, progress.is_cancelled),
                "Propagating...", "Propagation cancelled")

    def onSegmentInRoi(self):
        """The ROI's box on every slice it covers, with the prompts of each slice: one write, one Undo step."""
        with self.reportingErrors():
            markups = self.markups.read()
            if not markups.rois:
                self.showStatus("Select the segment's ROI or draw one (Box tool, Place ROI or New ROI) first.")
                return
            session = self.getSyncedSession(create=True)
            if session is None or not self.confirmSegmentVisible():
                return
            normal = self.getPromptViewNormal()
            self.runCancellableWrite(
                lambda progress: session.segment_in_roi(markups.rois[0], markups, normal, progress.report,
                                                        progress.is_cancelled),
                "Segmenting in the ROI...", "Segment in ROI cancelled")

    def onLoadModel(self):
        with self.reportingErrors():
            self.ensureModel()

    def onTestConnection(self):
        """Reach the server and show what it runs; errors (network, token, version) say what is wrong."""
        from medicosam.client import ServerClient

        server = self.getSettings().server
        with self.reportingErrors():
            url, token = server.get_url(), server.token or None
            self.showStatus(self.runBlocking(lambda: ServerClient(url, token).describe(),
                                             f"Connecting to {url}..."))

    # Markups -> session -> preview -------------------------------------------------------------------

    def scheduleMarkupsUpdate(self):
        """Any change of the segment's markups, by any module: one update once the events stop for a moment
        (a dragged point sends one per mouse move); a box or stroke being drawn updates when it ends."""
        if self.drag is None and self.markupsTimer is not None:
            self.markupsTimer.start()

    def getPromptViewNormal(self):
        """Normal of the slice view last clicked in (Red before any click): the slices prompts belong to."""
        sliceNode = slicer.mrmlScene.GetNodeByID(self.promptSliceNodeId or "vtkMRMLSliceNodeRed")
        sliceToRas = sliceNode.GetSliceToRAS()
        return [sliceToRas.GetElement(row, 2) for row in range(3)]

    def onMarkupsChanged(self):
        """Hand every markup of the segment to the session on the worker, then show the current preview."""
        if self.markupsFuture is not None and not self.markupsFuture.done():
            self.markupsTimer.start()  # the previous update is still running: try again shortly
            return
        markups = self.markups.read()
        session = None
        with self.reportingErrors():
            session = self.getSession(create=bool(markups.points or markups.rois or markups.curves))
        if session is None:
            return
        sessionKey = self.getSessionKey()
        self.markupsFuture = self.controller.submit_markups(session, markups, self.getPromptViewNormal(),
                                                            self.getSettings().refine)
        self.pending.append((self.markupsFuture, lambda result: self.onPreview(session, sessionKey, result)))

    def flushMarkups(self):
        """Run a markups update that is waiting for its timer now (before an action that reads the session)."""
        if self.markupsTimer.isActive():
            self.markupsTimer.stop()
            self.onMarkupsChanged()
        self.waitForWorker()

    def onPreview(self, session, sessionKey, result):
        if result is None or sessionKey != self.getSessionKey():
            return  # nothing changed on the current slice, or another segment was selected meanwhile
        preview, neighbours = result
        if preview is None:
            self.preview.clear()
            self.showStatus("The slice has no prompt left.")
            return
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        self.preview.show(preview, segmentationNode, sessionKey[1])
        self.showStatus(f"Preview of slice {preview.index} (predicted IoU {preview.score:.2f}): "
                        f"Apply ({getShortcutKeys()['apply']}) to keep it.")
        self.controller.prefetch(session, neighbours)  # embeddings the next click or propagation will need

    def getSyncedSession(self, create=False):
        """The session with every markups change handed to it (an action may follow an edit at once)."""
        self.flushMarkups()
        return self.getSession(create=create)

    def clearDisplay(self):
        self.preview.clear()

    # Reading and writing the segment -----------------------------------------------------------------

    def getSelectedSegmentArray(self):
        """The selected segment now, as a bool (K, J, I) array on the session's grid."""
        import numpy as np

        from medicosam.effect.extent import get_array_on_extent, get_extent_shape

        labelmap = self.scriptedEffect.selectedSegmentLabelmap()
        extent = self.scriptedEffect.referenceGeometryImage().GetExtent()
        if labelmap is None or labelmap.GetPointData().GetScalars() is None:
            return np.zeros(get_extent_shape(extent), bool)
        return get_array_on_extent(getImageArray(labelmap) > 0, labelmap.GetExtent(), extent)

    def writeRequest(self, request):
        """One undo point when the request changes the segment, then per block: remove what it drops inside
        the region it covers, add the masks (editor rules apply to both); the rest of the segment stays."""
        if request is None:
            return
        modifier = self.scriptedEffect.defaultModifierLabelmap()
        array = getImageArray(modifier)
        self.controller.check_request(request, array.shape)
        origin = modifier.GetExtent()[::2]
        modes = slicer.qSlicerSegmentEditorAbstractEffect
        segment = self.getSelectedSegmentArray()
        self.preview.clear()
        if not request.changes(segment):
            self.showStatus("The segment already holds this result: nothing was written.")
            return
        self.scriptedEffect.saveStateForUndo()
        with slicer.util.RenderBlocker():
            for block in request.get_blocks():
                extent = block.get_extent(request.shape, origin)
                index = block.get_index()
                for mode, values in ((modes.ModificationModeRemove, block.get_removed(segment)),
                                     (modes.ModificationModeAdd, block.get_array())):
                    if values.any():
                        array[index] = values
                        modifier.Modified()
                        self.scriptedEffect.modifySelectedSegmentByLabelmap(modifier, mode, extent)
                        array[index] = 0
        modifier.Modified()
        self.showStatus(request.describe())

    def runCancellableWrite(self, task, text, cancelled):
        """Run `task(progress)` behind a cancellable dialog and write the request it returns (None:
        cancelled, the segment is left as it was)."""
        from medicosam.effect.worker import TaskProgress

        progress = TaskProgress()
        request = self.runBlocking(lambda: task(progress), text, progress)
        if request is None:
            self.showStatus(f"{cancelled}: the segment was not changed.")
            return
        self.writeRequest(request)

    # Settings, sessions and the model ----------------------------------------------------------------

    def getSettings(self):
        import dataclasses

        from medicosam.effect.settings import EffectSettings, ServerSettings
        from medicosam.errors import InputError

        try:
            settings = EffectSettings.from_parameters(self.readParameter)
        except InputError as error:
            self.showStatus(str(error))
            settings = EffectSettings()
        server = ServerSettings.from_application_settings(qt.QSettings().value, self.sessionToken)
        return dataclasses.replace(settings, server=server)

    def writeSettings(self, settings):
        """The scene parameters, and where the model runs in Slicer's application settings (the token only
        when remembered: this effect holds it for the Slicer session otherwise)."""
        with slicer.util.NodeModify(self.scriptedEffect.parameterSetNode()):
            for name, value in settings.to_parameters().items():
                self.scriptedEffect.setParameter(name, value)
        self.sessionToken = settings.server.token
        applicationSettings = qt.QSettings()
        for key, value in settings.server.to_application_settings().items():
            applicationSettings.setValue(key, value)

    def getSession(self, create=True):
        """The session of the selected segment; created (loading the model if needed) when `create`."""
        segmentKey = self.getSessionKey()
        source = self.scriptedEffect.sourceVolumeImageData()
        if segmentKey is None or source is None:
            self.showStatus("Select a segmentation, a segment and a source volume first.")
            return None
        if create and not self.ensureModel():  # first: the imports below need the installed packages
            return None
        session = None
        if self.controller.loaded is not None:
            from medicosam.effect.extent import get_array_on_extent

            sourceKey, ijkToRas, extent = self.getSourceGeometry(source)
            session = self.controller.get_session(
                segmentKey, sourceKey, ijkToRas,
                lambda: get_array_on_extent(getImageArray(source), source.GetExtent(), extent).copy(),
                self.getSettings().refine, create)
        if session is None:
            self.showStatus("Nothing to do yet: click a point or drag a box on a slice first.")
        return session

    def getSourceGeometry(self, source):
        """(key of the aligned source volume, array index -> world RAS matrix, the editor's extent)."""
        from medicosam.effect.extent import get_world_ijk_to_ras
        from medicosam.errors import DataError

        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        localToWorld = None
        transformNode = segmentationNode.GetParentTransformNode()
        if transformNode is not None:
            if not transformNode.IsTransformToWorldLinear():
                raise DataError("The segmentation is under a non-linear transform: harden the transform "
                                "(Data module, right-click the segmentation) before using MedicoSAM.")
            localToWorld = getNumpyMatrix(transformNode.GetMatrixTransformToWorld)
        extent = self.scriptedEffect.referenceGeometryImage().GetExtent()
        imageToLocal = getNumpyMatrix(source.GetImageToWorldMatrix)
        sourceKey = (source.GetMTime(), tuple(extent))
        return sourceKey, get_world_ijk_to_ras(imageToLocal, extent, localToWorld), extent

    def ensureModel(self):
        """Load the chosen model (installing packages and downloading weights if the user agrees)."""
        settings = self.getSettings()
        if self.controller.use_settings(settings):
            return True
        if not self.dependencies.ensure(settings):
            return False
        if not settings.server.remote and not self.dependencies.confirmDownload(settings.model):
            return False
        status = self.controller.load_model(settings)
        self.refreshModelChoices()
        self.showStatus(status)
        return True

    def refreshModelChoices(self):
        from medicosam.effect.settings import get_model_choices

        try:
            from medicosam.models.download import list_cached_models

            cached = list_cached_models()
        except ImportError:  # platformdirs is not installed yet: nothing was downloaded
            cached = []
        self.panel.setModelChoices(get_model_choices(cached))
        self.updateGUIFromMRML()

    # Worker, status and dialogs ----------------------------------------------------------------------

    def onPoll(self):
        """Hand finished preview jobs to their callbacks, in submission order, on the GUI thread."""
        from medicosam.errors import MedicoSAMError

        while self.pending and self.pending[0][0].done():
            future, callback = self.pending.pop(0)
            if future.cancelled():
                continue
            try:
                result = future.result()
            except MedicoSAMError as error:
                self.showError(error)
                continue
            except Exception as error:
                logging.exception("MedicoSAM preview failed")
                self.showError(error)
                continue
            callback(result)

    def waitForWorker(self, timeoutSeconds=120.0):
        """Process every queued preview job (used by the self-test and before blocking actions)."""
        deadline = time.monotonic() + timeoutSeconds
        while self.pending and time.monotonic() < deadline:
            slicer.app.processEvents()
            self.onPoll()
            time.sleep(0.01)

    def runBlocking(self, function, text, progress=None):
        """Run `function` on the worker while the GUI stays live behind a progress dialog (Cancel
        when `progress` is a TaskProgress); returns its result or raises its error."""
        from medicosam.errors import InputError

        if self.busy:  # a shortcut pressed before the dialog appeared
            raise InputError("MedicoSAM is busy: wait until the running action finishes.")
        self.busy = True
        future = self.controller.get_worker().submit(function)
        dialog = createProgressDialog(text, cancellable=progress is not None)
        dialog.minimumDuration = BUSY_DIALOG_DELAY_MS
        try:
            while not future.done():
                if progress is not None:
                    if dialog.wasCanceled and not progress.is_cancelled():
                        progress.cancel()
                        dialog.setLabelText("Cancelling...")
                    done, total = progress.get()
                    dialog.setMaximum(1000 if total else 0)
                    dialog.setValue(min(1000, done * 1000 // total) if total else 0)
                else:
                    dialog.setValue(0)
                slicer.app.processEvents()
                time.sleep(0.02)
        finally:
            closeDialog(dialog)
            self.busy = False
        self.onPoll()  # jobs queued before this one finished first: show their results
        return future.result()

    @contextlib.contextmanager
    def reportingErrors(self):
        """Show errors of a user action in the panel (and a dialog) instead of the Python console."""
        from medicosam.errors import MedicoSAMError

        try:
            yield
        except MedicoSAMError as error:
            self.showError(error)
        except Exception as error:
            logging.exception("MedicoSAM failed")
            self.showError(error)

    def showStatus(self, text):
        if self.panel is not None:
            self.panel.showStatus(text)
        slicer.util.showStatusMessage("MedicoSAM: " + text, 5000)

    def showError(self, error):
        from medicosam.errors import InputError
        from medicosam.geometry import PointOutsideVolumeError

        self.showStatus(str(error))
        if not isinstance(error, (PointOutsideVolumeError, InputError)):  # a missed click or an action out of
            slicer.util.errorDisplay(str(error), windowTitle="MedicoSAM")  # order: the status says what to do

    def confirm(self, text):
        return slicer.app.testingEnabled() or slicer.util.confirmOkCancelDisplay(text, windowTitle="MedicoSAM")

    def installShortcuts(self):
        """Shortcuts on the options frame: active while it is shown, deleted with it even if Slicer never calls
        `cleanup` (5.6, 5.8)."""
        from medicosam.effect.settings import SHORTCUTS

        for key, action in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), self.scriptedEffect.optionsFrame())
            slot = functools.partial(self.onAction, action)  # kept to disconnect it
            shortcut.connect("activated()", slot)
            self.shortcuts.append((shortcut, slot))

    def removeShortcuts(self):
        for shortcut, slot in self.shortcuts:
            shortcut.disconnect("activated()", slot)
            shortcut.setParent(None)
        self.shortcuts = []


def isMarkupHovered():
    """Whether the mouse is over a markup's control point or handle: the markups widget then drags it on a
    left press, so the effect must let that press through (the display node's active component)."""
    return any(markupsDisplay.GetActiveComponentType() != slicer.vtkMRMLMarkupsDisplayNode.ComponentNone
               for markupsDisplay in slicer.util.getNodesByClass("vtkMRMLMarkupsDisplayNode"))


def isDragged(drag, xy):
    """Whether the mouse moved far enough from where the drag started to draw a box."""
    from medicosam.effect.interaction import MIN_BOX_DRAG_PIXELS

    return max(abs(xy[0] - drag.startXy[0]), abs(xy[1] - drag.startXy[1])) >= MIN_BOX_DRAG_PIXELS
