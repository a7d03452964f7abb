"""MedicoSAM Segment Editor effect: the thin Slicer layer over `medicosam.effect`.

Slicer cannot run in the project's tests, so this file keeps only what needs Slicer: widgets, Qt timers
and dialogs, and MRML I/O. It reads the segment's markups point lists and ROI in world RAS, the view's
orientation and the source volume as the editor aligned it to the segmentation, hands them to the
`EffectController` (which owns the model, predictor and sessions and runs them on the inference worker),
and writes what a session returns through `modifySelectedSegmentByLabelmap` after one `saveStateForUndo`.
The prompts are the user's own markups nodes, chosen per segment and remembered in segment tags: the
effect's click tools, Slicer's place mode and any module that edits them change the same nodes, and their
point events update the preview. Every decision (which model to keep, which slice a point lands on, what
to propagate, what to write) is in `medicosam.effect` and tested without Slicer. Nothing heavy is imported
at file scope: torch and SAM are imported on first use, after the user agreed to install them. With
"Run on: server" (URL and token in Slicer's application settings, never in the scene) the model runs
in `medicosam serve` and nothing beyond what Slicer bundles is installed.
"""

import contextlib
import logging
import os
import time

import ctk
import qt
import slicer
import vtk
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

TOOL_BUTTONS = (("positive", "+ Point", "Left-click adds a point inside the object to the + point list."),
                ("negative", "- Point", "Left-click adds a point outside the object to the - point list."),
                ("box", "Box", "Left-drag draws a box around the object: it sets the ROI."))
#: Markups role -> (node class, label in the options, colour of a node the effect creates).
MARKUPS_ROLES = {"positive": ("vtkMRMLMarkupsFiducialNode", "+ points:", (0.2, 0.9, 0.2)),
                 "negative": ("vtkMRMLMarkupsFiducialNode", "- points:", (1.0, 0.25, 0.25)),
                 "roi": ("vtkMRMLMarkupsROINode", "ROI:", (1.0, 0.85, 0.1))}
MIN_BOX_DRAG_PIXELS = 4
MARKUPS_DELAY_MS = 100  # markups events within this time (a point being dragged) make one update
BUSY_DIALOG_DELAY_MS = 400
DOCS_URL = "https://github.com/MedicoSAM/SlicerMedicoSAM/blob/main/docs/slicer.md"


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Segment with SAM prompts (points, box), preview, apply, propagate through the volume."""

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "MedicoSAM"
        scriptedEffect.perSegment = True
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        from medicosam.effect.controller import EffectController

        self.controller = EffectController(self.runBlocking, self.clearDisplay)  # model, predictor, sessions
        self.pending = []  # [(future, callback)] of preview jobs, polled on the GUI thread
        self.busy = False  # a blocking job (apply, propagate, model loading) is running
        self.boxStart = None  # (xy, ras, slice node ID) while a box is dragged
        self.promptSliceNodeId = None  # the slice view last clicked in: its orientation picks the slices
        self.markupsObservations = []  # (node, observer tag) of the selected segment's markups
        self.markupsFuture = None  # the markups update running on the worker
        self.previewNode = None  # the temporary segmentation that shows the preview
        self.displayedSessionKey = None
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
        return f"""<html>Segment with MedicoSAM (Segment Anything for medical images).<br>
<b>+ Point</b> ({key["positive"]}) / <b>- Point</b> ({key["negative"]}): click inside / outside the object in
a Red, Green or Yellow view aligned with the volume. <b>Box</b> ({key["box"]}): drag a box around it. The
points and the box are the segment's markups (+ / - point lists, ROI): place, move or delete them with the
Markups toolbar or module too; the preview follows every change. <b>Segment in ROI</b> segments every slice
the ROI covers; propagation stays inside a ROI that spans several slices.<br>
<b>Apply</b> ({key["apply"]}) writes the previewed slice; <b>Propagate</b> ({key["propagate"]}) segments the
neighbouring slices from every applied slice. To correct, prompt on a wrong slice, Apply, Propagate again.
<b>Clear</b> ({key["clear"]}) removes the slice's prompts; <b>{key["refine"]}</b> toggles refinement with the
previous mask. Undo works as for any effect. See the <a href="{DOCS_URL}">user guide</a>.</html>"""

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
        self.unobserveMarkups()
        self.controller.release()
        self.removePreviewNode()

    def activate(self):
        self.createPreviewNode()
        self.installShortcuts()
        self.refreshModelChoices()
        self.updateMarkupsSelectors()
        self.pollTimer.start()

    def deactivate(self):
        self.pollTimer.stop()
        self.markupsTimer.stop()
        self.unobserveMarkups()
        self.removeShortcuts()
        self.removePreviewNode()
        self.boxStart = None
        self.controller.stop_prefetch()

    def setupOptionsFrame(self):
        from medicosam.device import DEVICE_CHOICES
        from medicosam.effect.settings import DIRECTION_LABELS, MODE_LABELS, RUN_ON_LABELS

        modelSection = ctk.ctkCollapsibleButton()
        modelSection.text = "Model"
        modelForm = qt.QFormLayout(modelSection)
        self.runOnSelector = qt.QComboBox()
        for runOn, label in RUN_ON_LABELS.items():
            self.runOnSelector.addItem(label, runOn)
        self.runOnSelector.setToolTip("Where the model runs: here (needs PyTorch), or on a `medicosam serve` server "
                                      "(needs nothing more here). Kept in Slicer's settings, not in the scene.")
        modelForm.addRow("Run on:", self.runOnSelector)
        self.serverUrlEdit = qt.QLineEdit()
        self.serverUrlEdit.placeholderText = "http://gpu-host:8765"
        self.serverUrlEdit.setToolTip("The URL `medicosam serve` prints at start (https:// behind a TLS proxy).")
        self.serverUrlLabel = qt.QLabel("Server URL:")
        modelForm.addRow(self.serverUrlLabel, self.serverUrlEdit)
        self.serverTokenEdit = qt.QLineEdit()
        self.serverTokenEdit.echoMode = qt.QLineEdit.Password
        self.serverTokenEdit.setToolTip("The token the server was started with (--token or MEDICOSAM_TOKEN); none "
                                        "for a server on this computer's loopback. Kept in Slicer's settings.")
        self.serverTokenLabel = qt.QLabel("Token:")
        modelForm.addRow(self.serverTokenLabel, self.serverTokenEdit)
        self.testConnectionButton = qt.QPushButton("Test connection")
        self.testConnectionButton.objectName = self.__class__.__name__ + "TestConnection"
        self.testConnectionButton.setToolTip("Ask the server which model it runs (name, architecture, hash).")
        modelForm.addRow(self.testConnectionButton)
        self.modelSelector = qt.QComboBox()
        self.modelSelector.setToolTip("Downloaded models load at once; others download on first use, after you agree. "
                                      "SAM2 models install the sam2 package first (Slicer 5.10 or later).")
        self.modelLabel = qt.QLabel("Model:")
        modelForm.addRow(self.modelLabel, self.modelSelector)
        self.checkpointSelector = ctk.ctkPathLineEdit()
        self.checkpointSelector.filters = ctk.ctkPathLineEdit.Files
        self.checkpointSelector.nameFilters = ["SAM checkpoints (*.pth *.pt)"]
        self.checkpointSelector.setToolTip("A SAM state dict (vit_b/l/h or a MedicoSAM export).")
        self.checkpointLabel = qt.QLabel("Checkpoint file:")
        modelForm.addRow(self.checkpointLabel, self.checkpointSelector)
        self.deviceSelector = qt.QComboBox()
        for device in DEVICE_CHOICES:
            self.deviceSelector.addItem(device.upper() if device != "auto" else "Auto (GPU if available)", device)
        self.deviceLabel = qt.QLabel("Device:")
        modelForm.addRow(self.deviceLabel, self.deviceSelector)
        self.cacheSpinBox = qt.QSpinBox()
        self.cacheSpinBox.setRange(64, 1024 * 1024)
        self.cacheSpinBox.setSingleStep(256)
        self.cacheSpinBox.suffix = " MB"
        self.cacheSpinBox.setToolTip("Memory for slice embeddings; the oldest are dropped beyond it.")
        self.cacheLabel = qt.QLabel("Embedding memory:")
        modelForm.addRow(self.cacheLabel, self.cacheSpinBox)
        self.fastCheckBox = qt.QCheckBox("Fast inference")
        self.fastCheckBox.setToolTip("Fused attention, bf16 where the device runs it natively and embeddings kept in "
                                     "bf16 (twice as many slices fit in memory). Off: the official fp32 SAM path, "
                                     "slower; use it to check a result.")
        modelForm.addRow(self.fastCheckBox)
        self.loadModelButton = qt.QPushButton("Load model")
        self.loadModelButton.objectName = self.__class__.__name__ + "LoadModel"
        self.loadModelButton.setToolTip("Install what is missing, download and load the model now (otherwise "
                                        "the first click does it).")
        modelForm.addRow(self.loadModelButton)
        self.deleteModelsButton = qt.QPushButton("Delete downloaded models...")
        self.deleteModelsButton.objectName = self.__class__.__name__ + "DeleteModels"
        modelForm.addRow(self.deleteModelsButton)
        self.scriptedEffect.addOptionsWidget(modelSection)

        key = getShortcutKeys()
        toolLayout = qt.QHBoxLayout()
        self.toolButtons = {}
        self.toolGroup = qt.QButtonGroup()
        for tool, text, tip in TOOL_BUTTONS:
            button = qt.QPushButton(f"{text} ({key[tool]})")
            button.checkable = True
            button.setToolTip(tip)
            button.objectName = self.__class__.__name__ + "Tool" + tool.capitalize()
            self.toolGroup.addButton(button)
            toolLayout.addWidget(button)
            self.toolButtons[tool] = button
        self.scriptedEffect.addLabeledOptionsWidget("Prompt:", toolLayout)
        self.markupsSelectors, self.placeWidgets = {}, {}
        for role, (className, label, _) in MARKUPS_ROLES.items():
            self.markupsSelectors[role], self.placeWidgets[role] = self.createMarkupsSelector(role, className)
            markupsLayout = qt.QHBoxLayout()
            markupsLayout.addWidget(self.markupsSelectors[role])
            markupsLayout.addWidget(self.placeWidgets[role])
            self.scriptedEffect.addLabeledOptionsWidget(label, markupsLayout)
        self.refineCheckBox = qt.QCheckBox(f"Refine with the previous mask ({key['refine']})")
        self.refineCheckBox.setToolTip("Give SAM the slice's previous mask with each new prompt, so a click "
                                       "corrects the mask instead of starting over.")
        self.scriptedEffect.addOptionsWidget(self.refineCheckBox)
        sliceButtons = qt.QHBoxLayout()
        self.applyButton = qt.QPushButton(f"Apply slice ({key['apply']})")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.clearButton = qt.QPushButton(f"Clear prompts ({key['clear']})")
        self.clearButton.objectName = self.__class__.__name__ + "Clear"
        sliceButtons.addWidget(self.applyButton)
        sliceButtons.addWidget(self.clearButton)
        self.scriptedEffect.addOptionsWidget(sliceButtons)
        self.segmentInRoiButton = qt.QPushButton("Segment in ROI")
        self.segmentInRoiButton.objectName = self.__class__.__name__ + "SegmentInRoi"
        self.segmentInRoiButton.setToolTip("Segment every slice the ROI covers (its box on each slice, plus the points "
                                           "placed there), in one Undo step.")
        self.scriptedEffect.addOptionsWidget(self.segmentInRoiButton)

        propagationSection = ctk.ctkCollapsibleButton()
        propagationSection.text = "Propagation"
        propagationForm = qt.QFormLayout(propagationSection)
        self.directionSelector = qt.QComboBox()
        for direction, label in DIRECTION_LABELS.items():
            self.directionSelector.addItem(label, direction)
        propagationForm.addRow("Direction:", self.directionSelector)
        self.slicesSpinBox = qt.QSpinBox()
        self.slicesSpinBox.setRange(0, 10000)
        self.slicesSpinBox.specialValueText = "until the object ends"
        self.slicesSpinBox.setToolTip("At most this many slices beyond the outermost applied slices.")
        propagationForm.addRow("Slices:", self.slicesSpinBox)
        self.modeSelector = qt.QComboBox()
        for mode, label in MODE_LABELS.items():
            self.modeSelector.addItem(label, mode)
        self.modeSelector.setToolTip("Prompt derived from the previous slice's mask.")
        propagationForm.addRow("Prompt from previous slice:", self.modeSelector)
        self.iouSpinBox = qt.QDoubleSpinBox()
        self.iouSpinBox.setRange(0.0, 1.0)
        self.iouSpinBox.setSingleStep(0.05)
        self.iouSpinBox.setToolTip("Stop when a slice's mask overlaps the previous one less than this (IoU).")
        propagationForm.addRow("Stop below IoU:", self.iouSpinBox)
        self.boxExtensionSpinBox = qt.QDoubleSpinBox()
        self.boxExtensionSpinBox.setRange(0.0, 100.0)
        self.boxExtensionSpinBox.setSingleStep(0.05)
        self.boxExtensionSpinBox.setToolTip("Grow the box derived from the previous slice's mask by this fraction "
                                            "of its side (1 or more: by this many pixels).")
        propagationForm.addRow("Box extension:", self.boxExtensionSpinBox)
        self.propagateButton = qt.QPushButton(f"Propagate ({key['propagate']})")
        self.propagateButton.objectName = self.__class__.__name__ + "Propagate"
        propagationForm.addRow(self.propagateButton)
        self.scriptedEffect.addOptionsWidget(propagationSection)

        self.statusLabel = qt.QLabel()
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        optionsFrame = self.scriptedEffect.optionsFrame()
        self.pollTimer = qt.QTimer(optionsFrame)
        self.pollTimer.setInterval(50)
        self.connectSignal(self.pollTimer, "timeout()", self.onPoll)
        self.markupsTimer = qt.QTimer(optionsFrame)
        self.markupsTimer.setSingleShot(True)
        self.markupsTimer.setInterval(MARKUPS_DELAY_MS)
        self.connectSignal(self.markupsTimer, "timeout()", self.onMarkupsChanged)
        optionsFrame.connect("destroyed()", self.releaseResources)

        for combo in (self.modelSelector, self.deviceSelector, self.directionSelector, self.modeSelector):
            self.connectSignal(combo, "currentIndexChanged(int)", self.updateMRMLFromGUI)
        self.connectSignal(self.cacheSpinBox, "valueChanged(int)", self.updateMRMLFromGUI)
        self.connectSignal(self.slicesSpinBox, "valueChanged(int)", self.updateMRMLFromGUI)
        self.connectSignal(self.iouSpinBox, "valueChanged(double)", self.updateMRMLFromGUI)
        self.connectSignal(self.boxExtensionSpinBox, "valueChanged(double)", self.updateMRMLFromGUI)
        self.connectSignal(self.checkpointSelector, "currentPathChanged(QString)", self.updateMRMLFromGUI)
        self.connectSignal(self.refineCheckBox, "toggled(bool)", self.updateMRMLFromGUI)
        self.connectSignal(self.fastCheckBox, "toggled(bool)", self.updateMRMLFromGUI)
        for tool, button in self.toolButtons.items():
            self.connectSignal(button, "clicked()", lambda tool=tool: self.setTool(tool))
        self.connectSignal(self.applyButton, "clicked()", self.onApply)
        self.connectSignal(self.clearButton, "clicked()", self.onClear)
        self.connectSignal(self.propagateButton, "clicked()", self.onPropagate)
        self.connectSignal(self.segmentInRoiButton, "clicked()", self.onSegmentInRoi)
        for role, selector in self.markupsSelectors.items():
            self.connectSignal(selector, "currentNodeChanged(vtkMRMLNode*)",
                               lambda node, role=role: self.onMarkupsNodeSelected(role, node))
        self.connectSignal(self.deleteModelsButton, "clicked()", self.onDeleteModels)
        self.connectSignal(self.loadModelButton, "clicked()", self.onLoadModel)
        self.connectSignal(self.runOnSelector, "currentIndexChanged(int)", self.onServerSettingsChanged)
        self.connectSignal(self.serverUrlEdit, "editingFinished()", self.onServerSettingsChanged)
        self.connectSignal(self.serverTokenEdit, "editingFinished()", self.onServerSettingsChanged)
        self.connectSignal(self.testConnectionButton, "clicked()", self.onTestConnection)

    def createMarkupsSelector(self, role, className):
        """A node selector (create, rename, delete) and Slicer's place button for one markups role."""
        from medicosam.effect.settings import MARKUPS_NAMES

        selector = slicer.qMRMLNodeComboBox()
        selector.nodeTypes = [className]
        selector.addEnabled = selector.renameEnabled = selector.removeEnabled = selector.noneEnabled = True
        selector.baseName = MARKUPS_NAMES[role]
        selector.setMRMLScene(slicer.mrmlScene)
        selector.setToolTip("The segment's " + ("ROI" if role == "roi" else f"{role} point list") +
                            "; remembered with the segment and saved with the scene.")
        placeWidget = slicer.qSlicerMarkupsPlaceWidget()
        placeWidget.setMRMLScene(slicer.mrmlScene)
        placeWidget.buttonsVisible = False
        placeWidget.placeButton().show()
        placeWidget.placeMultipleMarkups = (placeWidget.ForcePlaceSingleMarkup if role == "roi"
                                            else placeWidget.ForcePlaceMultipleMarkups)
        return selector, placeWidget

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
        from medicosam.effect.settings import CUSTOM_MODEL

        settings = self.getSettings()
        propagation = settings.propagation
        widgets = (self.modelSelector, self.checkpointSelector, self.deviceSelector, self.cacheSpinBox,
                   self.fastCheckBox, self.refineCheckBox, self.directionSelector, self.slicesSpinBox,
                   self.modeSelector, self.iouSpinBox, self.boxExtensionSpinBox)
        wasBlocked = [widget.blockSignals(True) for widget in widgets]
        self.modelSelector.setCurrentIndex(self.modelSelector.findData(settings.model))
        self.checkpointSelector.currentPath = settings.custom_checkpoint
        self.deviceSelector.setCurrentIndex(self.deviceSelector.findData(settings.device))
        self.cacheSpinBox.value = settings.cache_mb
        self.fastCheckBox.checked = settings.fast
        self.refineCheckBox.checked = settings.refine
        self.directionSelector.setCurrentIndex(self.directionSelector.findData(propagation.direction))
        self.slicesSpinBox.value = propagation.max_slices or 0  # 0: "until the object ends"
        self.modeSelector.setCurrentIndex(self.modeSelector.findData(propagation.mode))
        self.iouSpinBox.value = propagation.iou_threshold
        self.boxExtensionSpinBox.value = propagation.box_extension
        for widget, blocked in zip(widgets, wasBlocked):
            widget.blockSignals(blocked)
        for tool, button in self.toolButtons.items():
            button.checked = tool == settings.tool
        remote = settings.server.remote
        self.checkpointLabel.visible = self.checkpointSelector.visible = settings.model == CUSTOM_MODEL and not remote
        self.updateServerWidgets(settings.server)
        for widget in (self.modelLabel, self.modelSelector, self.deviceLabel, self.deviceSelector, self.cacheLabel,
                       self.cacheSpinBox, self.deleteModelsButton):
            widget.visible = not remote  # the server runs its own model, on its own device and cache
        self.loadModelButton.text = "Connect" if remote else "Load model"
        if self.getSessionKey() != self.displayedSessionKey:
            self.clearDisplay()
            self.updateMarkupsSelectors()

    def updateMRMLFromGUI(self):
        import dataclasses

        current = self.getSettings()
        propagation = dataclasses.replace(
            current.propagation,
            direction=self.directionSelector.itemData(self.directionSelector.currentIndex),
            max_slices=self.slicesSpinBox.value or None,  # 0: "until the object ends"
            mode=self.modeSelector.itemData(self.modeSelector.currentIndex),
            iou_threshold=self.iouSpinBox.value,
            box_extension=self.boxExtensionSpinBox.value,
        )
        self.writeSettings(dataclasses.replace(
            current,
            model=self.modelSelector.itemData(self.modelSelector.currentIndex) or current.model,
            custom_checkpoint=self.checkpointSelector.currentPath,
            device=self.deviceSelector.itemData(self.deviceSelector.currentIndex),
            refine=self.refineCheckBox.checked,
            cache_mb=self.cacheSpinBox.value,
            fast=self.fastCheckBox.checked,
            propagation=propagation,
        ))

    def updateServerWidgets(self, server):
        widgets = (self.runOnSelector, self.serverUrlEdit, self.serverTokenEdit)
        wasBlocked = [widget.blockSignals(True) for widget in widgets]
        self.runOnSelector.setCurrentIndex(self.runOnSelector.findData(server.run_on))
        if self.serverUrlEdit.text != server.url:
            self.serverUrlEdit.text = server.url
        if self.serverTokenEdit.text != server.token:
            self.serverTokenEdit.text = server.token
        for widget, blocked in zip(widgets, wasBlocked):
            widget.blockSignals(blocked)
        for widget in (self.serverUrlLabel, self.serverUrlEdit, self.serverTokenLabel, self.serverTokenEdit,
                       self.testConnectionButton):
            widget.visible = server.remote

    def getServerSettings(self):
        """Where the model runs, from Slicer's application settings (never the scene: the token stays here)."""
        from medicosam.effect.settings import ServerSettings

        return ServerSettings.from_application_settings(qt.QSettings().value)

    def onServerSettingsChanged(self):
        from medicosam.effect.settings import ServerSettings

        with self.reportingErrors():
            server = ServerSettings(self.runOnSelector.itemData(self.runOnSelector.currentIndex) or "local",
                                    self.serverUrlEdit.text.strip(), self.serverTokenEdit.text.strip())
            applicationSettings = qt.QSettings()
            for key, value in server.to_application_settings().items():
                applicationSettings.setValue(key, value)
        self.updateGUIFromMRML()

    def onTestConnection(self):
        """Reach the server and show what it runs; errors (network, token, version) say what is wrong."""
        from medicosam.client import ServerClient

        self.onServerSettingsChanged()
        server = self.getServerSettings()
        with self.reportingErrors():
            url, token = server.get_url(), server.token or None
            self.showStatus(self.runBlocking(lambda: ServerClient(url, token).describe(),
                                             f"Connecting to {url}..."))

    def writeSettings(self, settings):
        with slicer.util.NodeModify(self.scriptedEffect.parameterSetNode()):
            for name, value in settings.to_parameters().items():
                self.scriptedEffect.setParameter(name, value)

    #
    # Effect specific methods (the above ones are the API methods to override)
    #

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        from medicosam.errors import MedicoSAMError

        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        xy = callerInteractor.GetEventPosition()
        sliceNodeId = viewWidget.mrmlSliceNode().GetID()
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            self.promptSliceNodeId = sliceNodeId  # also for points placed with Slicer's place mode
        interactionNode = slicer.app.applicationLogic().GetInteractionNode()
        if interactionNode.GetCurrentInteractionMode() != interactionNode.ViewTransform:
            return False  # Slicer's place mode takes the click
        if callerInteractor.GetShiftKey() or callerInteractor.GetControlKey() or callerInteractor.GetAltKey():
            return False
        if eventId == vtk.vtkCommand.LeftButtonPressEvent:
            if self.busy:
                return True
            confirmed = self.scriptedEffect.confirmCurrentSegmentVisible()
            if confirmed in (self.scriptedEffect.NotConfirmed, self.scriptedEffect.ConfirmedWithDialog):
                return True  # the release event went to the dialog: do not start a prompt
            ras = self.xyToRas(xy, viewWidget)
            tool = self.getSettings().tool
            if tool == "box":
                self.boxStart = (xy, ras, sliceNodeId)
            else:
                with self.reportingErrors():
                    self.getMarkupsNode(tool, create=True).AddControlPointWorld(*ras)
            return True
        if self.boxStart is None or self.boxStart[2] != sliceNodeId:
            return False
        if eventId not in (vtk.vtkCommand.MouseMoveEvent, vtk.vtkCommand.LeftButtonReleaseEvent):
            return False
        startXy, startRas, _ = self.boxStart
        dragged = max(abs(xy[0] - startXy[0]), abs(xy[1] - startXy[1])) >= MIN_BOX_DRAG_PIXELS
        if dragged:
            try:
                self.setRoiFromDrag(startRas, self.xyToRas(xy, viewWidget), viewWidget.mrmlSliceNode())
            except MedicoSAMError as error:  # no dialog inside a drag: the status says it, the drag ends
                self.boxStart = None
                self.showStatus(str(error))
                return True
        if eventId == vtk.vtkCommand.LeftButtonReleaseEvent:
            self.boxStart = None
            if not dragged:
                self.showStatus("Drag to draw a box: a click is too small for one.")
            self.markupsTimer.start()
        return True

    def interactionNodeModified(self, interactionNode):
        """Stay active in Slicer's place mode (the base class would deactivate the effect): placing the
        segment's points with the Markups toolbar or a place button is one way to prompt."""

    def setTool(self, tool):
        import dataclasses

        slicer.app.applicationLogic().GetInteractionNode().SwitchToViewTransformMode()  # the tool takes clicks
        self.writeSettings(dataclasses.replace(self.getSettings(), tool=tool))

    def toggleRefine(self):
        self.refineCheckBox.checked = not self.refineCheckBox.checked

    def setRoiFromDrag(self, startRas, endRas, sliceNode):
        """Set the segment's ROI to the dragged box: on the drag's slice, with the view's axes."""
        from medicosam.effect.extent import get_extent_shape
        from medicosam.markups import get_roi_from_drag, get_roi_from_matrix

        source = self.scriptedEffect.sourceVolumeImageData()
        if source is None:
            self.showStatus("Select a source volume first.")
            return
        _, ijkToRas, extent = self.getSourceGeometry(source)
        sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        roi = get_roi_from_drag(startRas, endRas, sliceToRas, ijkToRas, get_extent_shape(extent))
        roiNode = self.getMarkupsNode("roi", create=True)
        transformNode = roiNode.GetParentTransformNode()
        if transformNode is not None:  # the ROI node's own frame
            roi = get_roi_from_matrix(getNumpyMatrix(transformNode.GetMatrixTransformFromWorld) @ roi.get_matrix(),
                                      roi.size)
        with slicer.util.NodeModify(roiNode):
            roiNode.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(roi.get_matrix()))
            roiNode.SetSize(*roi.size)

    # Markups: the segment's prompt nodes ---------------------------------------------------------

    def getSelectedSegment(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        if segmentationNode is None or not parameterSetNode.GetSelectedSegmentID():
            return None
        return segmentationNode.GetSegmentation().GetSegment(parameterSetNode.GetSelectedSegmentID())

    def getMarkupsNode(self, role, create=False):
        """The selected segment's node for `role` (its ID is a segment tag, saved with the segmentation);
        with `create`, a new one when there is none."""
        from medicosam.effect.settings import MARKUPS_NAMES, MARKUPS_TAGS
        from medicosam.errors import InputError

        segment = self.getSelectedSegment()
        if segment is None:
            if create:
                raise InputError("Select a segmentation and a segment first.")
            return None
        nodeId = vtk.mutable("")
        node = slicer.mrmlScene.GetNodeByID(str(nodeId)) if segment.GetTag(MARKUPS_TAGS[role], nodeId) else None
        if node is None and create:
            className, _, color = MARKUPS_ROLES[role]
            node = slicer.mrmlScene.AddNewNodeByClass(className, slicer.mrmlScene.GenerateUniqueName(
                f"{MARKUPS_NAMES[role]} {segment.GetName()}"))
            node.CreateDefaultDisplayNodes()
            node.GetDisplayNode().SetSelectedColor(color)
            node.GetDisplayNode().SetColor(color)
            self.setMarkupsNode(role, node)
        return node

    def setMarkupsNode(self, role, node):
        """Make `node` the selected segment's node for `role` and show it in the role's selector."""
        from medicosam.effect.settings import MARKUPS_TAGS

        segment = self.getSelectedSegment()
        if segment is not None:
            segment.SetTag(MARKUPS_TAGS[role], node.GetID() if node is not None else "")
        self.updateMarkupsSelectors()

    def onMarkupsNodeSelected(self, role, node):
        if node is not None:
            node.CreateDefaultDisplayNodes()  # a node made by the selector has none yet
        self.setMarkupsNode(role, node)
        self.markupsTimer.start()

    def updateMarkupsSelectors(self):
        """Selectors and place buttons show the selected segment's nodes, and only those are observed."""
        for role, selector in self.markupsSelectors.items():
            node = self.getMarkupsNode(role)
            wasBlocked = selector.blockSignals(True)
            selector.setCurrentNode(node)
            selector.blockSignals(wasBlocked)
            self.placeWidgets[role].setCurrentNode(node)
            self.placeWidgets[role].enabled = node is not None
        self.observeMarkups()

    def observeMarkups(self):
        self.unobserveMarkups()
        events = (vtk.vtkCommand.ModifiedEvent, slicer.vtkMRMLMarkupsNode.PointAddedEvent,
                  slicer.vtkMRMLMarkupsNode.PointRemovedEvent, slicer.vtkMRMLMarkupsNode.PointModifiedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
                  slicer.vtkMRMLMarkupsNode.PointPositionUndefinedEvent,
                  slicer.vtkMRMLTransformableNode.TransformModifiedEvent)
        for role in MARKUPS_ROLES:
            markupsNode = self.getMarkupsNode(role)
            if markupsNode is not None:
                self.markupsObservations += [(markupsNode, markupsNode.AddObserver(event, self.onMarkupsEvent))
                                             for event in events]

    def unobserveMarkups(self):
        for markupsNode, tag in self.markupsObservations:
            markupsNode.RemoveObserver(tag)
        self.markupsObservations = []

    def onMarkupsEvent(self, caller, event):
        """Any change of the segment's markups, by any module: one update once the events stop for a moment
        (a dragged point sends one per mouse move). A box being dragged updates when it is released."""
        if self.boxStart is None:
            self.markupsTimer.start()

    def readControlPoints(self):
        """[(node, control point index, MarkupsPoint)] of the segment's defined points in world RAS (transforms
        hold), signed by their list, its name, their label or description."""
        from medicosam.markups import MarkupsPoint, is_negative_point

        found = []
        for role in ("positive", "negative"):
            markupsNode = self.getMarkupsNode(role)
            for n in range(markupsNode.GetNumberOfControlPoints() if markupsNode is not None else 0):
                if markupsNode.GetNthControlPointPositionStatus(n) != slicer.vtkMRMLMarkupsNode.PositionDefined:
                    continue  # still being placed, or skipped
                position = [0.0, 0.0, 0.0]
                markupsNode.GetNthControlPointPositionWorld(n, position)
                negative = role == "negative" or is_negative_point(
                    markupsNode.GetName(), markupsNode.GetNthControlPointLabel(n),
                    markupsNode.GetNthControlPointDescription(n))
                found.append((markupsNode, n, MarkupsPoint(tuple(position), not negative)))
        return found

    def readMarkups(self):
        """The selected segment's `markups.Markups`, in world RAS."""
        from medicosam.markups import Markups, get_roi_from_matrix

        points, rois = [entry[2] for entry in self.readControlPoints()], []
        roiNode = self.getMarkupsNode("roi")
        if roiNode is not None:
            roi = get_roi_from_matrix(slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToWorldMatrix()),
                                      roiNode.GetSize())
            rois += [roi] if roi is not None else []
        return Markups(points, rois)

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
        markups = self.readMarkups()
        session = None
        with self.reportingErrors():
            session = self.getSession(create=bool(markups.points or markups.rois))
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
            self.clearPreview()
            self.showStatus("The slice has no prompt left.")
            return
        self.showPreview(preview)
        self.showStatus(f"Preview of slice {preview.index} (predicted IoU {preview.score:.2f}): "
                        f"Apply ({getShortcutKeys()['apply']}) to keep it.")
        self.controller.prefetch(session, neighbours)  # embeddings the next click or propagation will need

    def getSyncedSession(self, create=False):
        """The session with every markups change handed to it (an action may follow an edit at once)."""
        self.flushMarkups()
        return self.getSession(create=create)

    def onApply(self):
        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is not None:
                self.writeRequest(self.runBlocking(session.apply, "Applying the preview..."))

    def onClear(self):
        """Delete the current slice's control points from the segment's lists, and the ROI when it is a box
        on that slice only: the markups are the prompts, so clearing the session alone would not last."""
        from medicosam.markups import get_markups_on_slice

        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is not None and session.current is not None:
                entries = self.readControlPoints()
                points, roisOnSlice, _ = get_markups_on_slice(self.readMarkups(), session.ijk_to_ras, session.shape,
                                                              *session.current)
                for number in sorted(points, key=lambda number: -entries[number][1]):  # last index first
                    entries[number][0].RemoveNthControlPoint(entries[number][1])
                if roisOnSlice:
                    self.getMarkupsNode("roi").SetSize(0.0, 0.0, 0.0)  # still the segment's ROI, but empty
                self.runBlocking(session.clear_prompts, "Clearing prompts...")
            self.clearDisplay()

    def onPropagate(self):
        from medicosam.effect.controller import get_propagation_config

        with self.reportingErrors():
            session = self.getSyncedSession()
            if session is None:
                return
            config = get_propagation_config(session, self.getSettings(), self.readMarkups().rois,
                                            self.getPromptViewNormal())
            segment = self.getSelectedSegmentArray()
            self.runCancellableWrite(
                lambda progress: session.propagate(config, segment, progress.report, progress.is_cancelled),
                "Propagating...", "Propagation cancelled")

    def onSegmentInRoi(self):
        """The ROI's box on every slice it covers, with the points of each slice: one write, one Undo step."""
        with self.reportingErrors():
            markups = self.readMarkups()
            if not markups.rois:
                self.showStatus("Select the segment's ROI or draw one (Box tool or Place ROI) first.")
                return
            session = self.getSyncedSession(create=True)
            if session is None:
                return
            normal = self.getPromptViewNormal()
            self.runCancellableWrite(
                lambda progress: session.segment_in_roi(markups.rois[0], markups, normal, progress.report,
                                                        progress.is_cancelled),
                "Segmenting in the ROI...", "Segment in ROI cancelled")

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

    def onLoadModel(self):
        with self.reportingErrors():
            self.ensureModel()

    def onDeleteModels(self):
        try:
            from medicosam.models.download import get_cache_dir, list_cached_models, remove_cached_model

            cached, folder = list_cached_models(), get_cache_dir()
        except ImportError:
            slicer.util.infoDisplay("No model was downloaded yet (MedicoSAM's Python packages are not installed).")
            return
        if not cached:
            slicer.util.infoDisplay(f"No downloaded model in {folder}.")
            return
        sizeMb = sum(entry.size for entry in cached) / 1e6
        names = ", ".join(entry.name for entry in cached)
        if not self.confirm(f"Delete {names} ({sizeMb:.0f} MB) from {folder}?\n"
                            "They will be downloaded again when you choose them."):
            return
        for entry in cached:
            remove_cached_model(entry.name)
        self.refreshModelChoices()
        self.showStatus(f"Deleted {sizeMb:.0f} MB of downloaded models.")

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

    # Sessions, model and dependencies -------------------------------------------------------------

    def getSettings(self):
        import dataclasses

        from medicosam.effect.settings import EffectSettings
        from medicosam.errors import InputError

        try:
            settings = EffectSettings.from_parameters(self.readParameter)
        except InputError as error:
            self.showStatus(str(error))
            settings = EffectSettings()
        return dataclasses.replace(settings, server=self.getServerSettings())

    def getSessionKey(self):
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode() if parameterSetNode else None
        if segmentationNode is None or not parameterSetNode.GetSelectedSegmentID():
            return None
        return segmentationNode.GetID(), parameterSetNode.GetSelectedSegmentID()

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
            return None
        self.displayedSessionKey = segmentKey
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
        if not self.ensureDependencies(settings):
            return False
        if not settings.server.remote and not self.confirmDownload(settings.model):
            return False
        status = self.controller.load_model(settings)
        self.refreshModelChoices()
        self.showStatus(status)
        return True

    def ensureDependencies(self, settings):
        """torch via the PyTorch extension, the rest with pip: each only after the user agrees. On a server
        only the client's packages (Slicer bundles them); SAM2 models add the SAM2 family's packages."""
        import importlib

        from medicosam.effect.requirements import (
            SAM2_BUILD_ENVIRONMENT,
            SAM2_PIP_OPTIONS,
            SAM2_REQUIREMENTS,
            check_family_supported,
            get_missing_requirements,
            is_torch_installed,
        )

        remote, family = settings.server.remote, settings.family
        if not remote:
            check_family_supported(family)
        if not remote and not is_torch_installed():
            try:
                import PyTorchUtils
            except ImportError:
                slicer.util.errorDisplay("MedicoSAM needs the PyTorch extension. Install 'PyTorch' from the "
                                         "Extensions Manager, restart Slicer, then try again.")
                return False
            if not self.confirm("MedicoSAM needs PyTorch, which is not installed yet. Install it now? "
                                "It downloads up to a few GB (a CUDA build when a GPU is present); "
                                "Slicer is busy until it finishes."):
                return False
            with self.installing("Installing PyTorch (up to a few GB)...", "PyTorch could not be installed"):
                PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False)
            importlib.invalidate_caches()
            if not is_torch_installed():
                return False
        missing = get_missing_requirements(family, remote)
        if missing:
            if not self.confirm(f"MedicoSAM needs these Python packages: {', '.join(missing)}. "
                                "Install them now with pip?"):
                return False
            sam2 = bool(set(missing) & set(SAM2_REQUIREMENTS.values()))
            with self.installing(f"Installing {', '.join(missing)}...", "The Python packages could not be installed"):
                if sam2:  # an sdist: built here without its CUDA kernel, against the installed torch
                    os.environ.update(SAM2_BUILD_ENVIRONMENT)
                slicer.util.pip_install([*missing, *([SAM2_PIP_OPTIONS] if sam2 else [])])
            importlib.invalidate_caches()
        return not get_missing_requirements(family, remote)

    @contextlib.contextmanager
    def installing(self, text, failure):
        """A progress dialog while pip runs (Slicer's pip runs on this thread and repaints at each output line);
        a failure becomes one RunError (`tryWithErrorDisplay` would show a dialog and re-raise)."""
        from medicosam.errors import RunError

        dialog = createProgressDialog(text + " pip's output is in the Python console.", cancellable=False)
        dialog.show()
        slicer.app.processEvents()
        try:
            yield
        except Exception as error:
            logging.exception(failure)
            raise RunError(f"{failure}: {error}. The Python console shows pip's output; install from the "
                                 "PyTorch Util module or with pip there, then try again.") from error
        finally:
            closeDialog(dialog)

    def confirmDownload(self, model):
        from medicosam.models.download import get_cache_dir, get_model_path
        from medicosam.models.registry import MODELS

        if model not in MODELS or get_model_path(model).is_file():
            return True
        spec = MODELS[model]
        size = f"{spec.size / 1e6:.0f} MB" if spec.size else "a few hundred MB"
        return self.confirm(f"Download the {model} weights ({size}) from {spec.url.split('/')[2]} into "
                            f"{get_cache_dir()}? They are checked against the published hash and kept for "
                            "later sessions ('Delete downloaded models...' removes them).")

    def refreshModelChoices(self):
        from medicosam.effect.settings import get_model_choices

        try:
            from medicosam.models.download import list_cached_models

            cached = list_cached_models()
        except ImportError:  # platformdirs is not installed yet: nothing was downloaded
            cached = []
        wasBlocked = self.modelSelector.blockSignals(True)
        self.modelSelector.clear()
        for choice in get_model_choices(cached):
            self.modelSelector.addItem(choice.label, choice.name)
        self.modelSelector.blockSignals(wasBlocked)
        self.updateGUIFromMRML()

    # Reading and writing the segment -------------------------------------------------------------

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
        self.clearPreview()
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

    # Display -------------------------------------------------------------------------------------

    def createPreviewNode(self):
        """The preview: a segmentation that is never saved with the scene, hidden from node selectors (the
        prompts need no display of their own: they are the segment's markups nodes)."""
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedicoSAM preview")
        node.SetSaveWithScene(False)
        node.SetHideFromEditors(True)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSaveWithScene(False)
        node.GetSegmentation().AddEmptySegment("preview", "MedicoSAM preview")
        node.GetDisplayNode().SetOpacity2DFill(0.35)
        node.GetDisplayNode().SetOpacity2DOutline(1.0)
        self.previewNode = node

    def removePreviewNode(self):
        if self.previewNode is not None and self.previewNode.GetScene() is not None:  # not removed with the scene
            self.previewNode.GetScene().RemoveNode(self.previewNode)
        self.previewNode = None

    def showPreview(self, preview):
        node = self.previewNode
        if node is None:
            return
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        node.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        segment = segmentationNode.GetSegmentation().GetSegment(self.getSessionKey()[1])
        node.GetSegmentation().GetSegment("preview").SetColor(segment.GetColor())
        from medicosam.effect.extent import get_extent_shape

        reference = self.scriptedEffect.referenceGeometryImage()
        block = preview.get_block()
        image = createLabelmap(reference, block.get_extent(get_extent_shape(reference.GetExtent()),
                                                           reference.GetExtent()[::2]))
        getImageArray(image)[:] = block.get_array()
        image.Modified()
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def clearPreview(self):
        node = self.previewNode
        if node is not None:
            empty = createLabelmap(self.scriptedEffect.referenceGeometryImage(), [0, -1, 0, -1, 0, -1])
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                empty, node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def clearDisplay(self):
        self.clearPreview()
        self.displayedSessionKey = self.getSessionKey()

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
        self.statusLabel.text = text
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

        actions = {"positive": lambda: self.setTool("positive"), "negative": lambda: self.setTool("negative"),
                   "box": lambda: self.setTool("box"), "apply": self.onApply, "propagate": self.onPropagate,
                   "clear": self.onClear, "refine": self.toggleRefine}
        for key, action in SHORTCUTS.items():
            shortcut = qt.QShortcut(qt.QKeySequence(key), self.scriptedEffect.optionsFrame())
            shortcut.connect("activated()", actions[action])
            self.shortcuts.append((shortcut, actions[action]))

    def removeShortcuts(self):
        for shortcut, slot in self.shortcuts:
            shortcut.disconnect("activated()", slot)
            shortcut.setParent(None)
        self.shortcuts = []

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


def getShortcutKeys():
    """Action -> key of the effect's shortcuts."""
    from medicosam.effect.settings import SHORTCUTS

    return {action: key for key, action in SHORTCUTS.items()}


def createProgressDialog(text, cancellable):
    """An application-modal MedicoSAM progress dialog, indeterminate until a maximum is set."""
    dialog = qt.QProgressDialog(text, "Cancel", 0, 0, slicer.util.mainWindow())
    dialog.setWindowTitle("MedicoSAM")
    dialog.setWindowModality(qt.Qt.ApplicationModal)
    dialog.autoClose = dialog.autoReset = False
    if not cancellable:
        dialog.setCancelButton(None)
    return dialog


def closeDialog(dialog):
    """Close and delete: a dialog parented to the main window would otherwise live as long as Slicer."""
    dialog.close()
    dialog.deleteLater()


def getImageArray(image):
    """Writable numpy view (K, J, I) of a VTK image's scalars."""
    from vtk.util.numpy_support import vtk_to_numpy

    dims = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])


def getNumpyMatrix(getter):
    """A 4x4 numpy matrix from a VTK getter that fills a vtkMatrix4x4."""
    import numpy as np

    matrix = vtk.vtkMatrix4x4()
    getter(matrix)
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


def createLabelmap(reference, extent):
    """An empty unsigned-char labelmap with the geometry of `reference` and the given extent."""
    image = slicer.vtkOrientedImageData()
    imageToWorld = vtk.vtkMatrix4x4()
    reference.GetImageToWorldMatrix(imageToWorld)
    image.SetImageToWorldMatrix(imageToWorld)
    image.SetExtent(*extent)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    image.GetPointData().GetScalars().Fill(0)
    return image
