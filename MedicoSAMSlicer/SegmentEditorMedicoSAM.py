"""Hidden module that registers the MedicoSAM Segment Editor effect, and its self-test.

Registration waits for `startupCompleted()`, so Slicer's startup does no MedicoSAM work at all; the
effect itself imports torch and SAM only when first used.
"""

import logging
import os

import slicer
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest


class SegmentEditorMedicoSAM(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorMedicoSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["The MedicoSAM developers"]
        self.parent.hidden = True
        self.parent.helpText = ("Registers the MedicoSAM effect (Segment Anything for medical images) "
                                "in the Segment Editor.")
        self.parent.acknowledgementText = ("Segment Anything by Meta AI; MedicoSAM weights by Archit et al. "
                                           "(computational-cell-analytics).")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self):
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        instance = effects.qSlicerSegmentEditorScriptedEffect(None)
        effectPath = os.path.join(os.path.dirname(__file__), "SegmentEditorMedicoSAMLib", "SegmentEditorEffect.py")
        instance.setPythonSource(effectPath.replace("\\", "/"))
        instance.self().register()


class SegmentEditorMedicoSAMTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (Developer Tools > Self Tests, Reload & Test, or ctest). Needs torch and SAM
    installed; with MEDICOSAM_TEST_INSTALL=1 the effect installs them as it would for a user.

    Without them the test says so and returns: `skipTest` would count as a failure, because Reload & Test
    and the SelfTests module call `runTest` directly and treat any exception as one. The checks are named
    `check...`, not `test...`: ctest (`slicer_add_python_unittest`) loads the case with unittest, which runs
    every `test*` method directly, past this guard; with none, it runs `runTest`.
    """

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        from medicosam.effect.requirements import get_missing_requirements, is_torch_installed

        if (not is_torch_installed() or get_missing_requirements()) and os.environ.get("MEDICOSAM_TEST_INSTALL") != "1":
            message = ("MedicoSAM self-test NOT RUN: torch / segment-anything are not installed; set "
                       "MEDICOSAM_TEST_INSTALL=1 to let the effect install them.")
            logging.warning(message)
            self.delayDisplay(message)
            return
        self.setUp()
        self.checkPromptApplyPropagateUndo()
        self.setUp()
        self.checkMarkupsRoiSegmentInRoiUndo()

    def checkPromptApplyPropagateUndo(self):
        """The segment Slicer writes equals what the core session computes for the same point on the
        same array (Dice >= 0.99), the overwrite rule holds, and Undo steps back one action at a time.
        The point is a control point added in world RAS to a point list chosen as the segment's + list.

        The model is a tiny SAM with random weights written by the test: its masks mean nothing, which
        is fine, because the test compares the Slicer layer with the core, not with an anatomy. Fast
        inference is off in the effect and in the core, so both run the same fp32 computation.
        """
        self.delayDisplay("Load MRHead, a segmentation with two segments, a tiny SAM checkpoint")
        volumeNode, segmentationNode, otherId, targetId = self.createScene()
        checkpoint = self.createTinyCheckpoint()
        editor, effect = self.createEditor(volumeNode, segmentationNode, targetId, checkpoint)
        try:
            self.delayDisplay("A markups point, apply, propagate in the Red view")
            sliceNode, ijkToRas, array, ras = self.prepareRedView(volumeNode)
            logic = effect.self()
            logic.promptSliceNodeId = sliceNode.GetID()
            pointListNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "object")
            logic.markups.setNode("positive", pointListNode)
            pointListNode.AddControlPointWorld(*ras)
            logic.flushMarkups()  # the point event's update, without waiting for its timer
            logic.onApply()
            applied = self.getSegment(segmentationNode, targetId, volumeNode)
            logic.onPropagate()
            propagated = self.getSegment(segmentationNode, targetId, volumeNode)

            self.delayDisplay("Compute the same clicks with the core, outside the effect")
            expectedApplied, expectedPropagated = self.computeWithCore(
                checkpoint, array, ijkToRas, ras, self.getViewNormal(sliceNode), logic.getSettings())
            self.assertGreater(expectedApplied.sum(), 0)
            self.assertGreaterEqual(getDice(applied, expectedApplied), 0.99)
            self.assertGreaterEqual(getDice(propagated, expectedPropagated), 0.99)
            other = self.getSegment(segmentationNode, otherId, volumeNode)
            self.assertFalse((other & propagated).any(), "the overwrite rule should clear 'other' under the new mask")

            self.delayDisplay("Undo steps back: propagation, then apply; the segment keeps its point list")
            editor.undo()
            self.assertTrue((self.getSegment(segmentationNode, targetId, volumeNode) == applied).all())
            editor.undo()
            self.assertFalse(self.getSegment(segmentationNode, targetId, volumeNode).any())
            self.assertEqual(logic.markups.getNode("positive").GetID(), pointListNode.GetID())  # a node reference
        finally:
            editor.setActiveEffect(None)  # removes the shortcuts, timer and temporary nodes even on failure
        self.delayDisplay("checkPromptApplyPropagateUndo passed")

    def checkMarkupsRoiSegmentInRoiUndo(self):
        """An ROI over five slices and a negative point: moving the point changes the prompt of its slice,
        "Segment in ROI" writes exactly what the core writes (Dice >= 0.99) on the ROI's slices only, in one
        Undo step."""
        import numpy as np

        from medicosam.geometry import get_slice_axis
        from medicosam.markups import MarkupsPoint, get_roi_from_matrix, get_roi_slice_range

        self.delayDisplay("MRHead, an ROI and a negative point list")
        volumeNode, segmentationNode, _, targetId = self.createScene()
        checkpoint = self.createTinyCheckpoint()
        editor, effect = self.createEditor(volumeNode, segmentationNode, targetId, checkpoint)
        try:
            sliceNode, ijkToRas, array, ras = self.prepareRedView(volumeNode)
            logic = effect.self()
            logic.promptSliceNodeId = sliceNode.GetID()
            roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "organ box")
            roiNode.SetCenterWorld(*ras)
            thickness = 4.8 * np.linalg.norm(ijkToRas[:3, 2])  # 5 slices along K (the rounding covers 4.8)
            roiNode.SetSize(60.0, 60.0, thickness)
            logic.markups.setNode("roi", roiNode)
            negativeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "background negative")
            logic.markups.setNode("negative", negativeNode)
            outside = (ijkToRas @ [array.shape[2] // 2 + 25, array.shape[1] // 2, array.shape[0] // 2, 1.0])[:3]
            negativeNode.AddControlPointWorld(*outside)
            logic.flushMarkups()
            session = logic.getSession(create=False)
            before = session.get_prompts().points.copy()
            negativeNode.SetNthControlPointPositionWorld(0, *(outside + ijkToRas[:3, 0] * 5))
            logic.flushMarkups()
            self.assertFalse(np.array_equal(before, session.get_prompts().points), "moving a point should re-prompt")

            self.delayDisplay("Segment in ROI, compared with the core")
            logic.onSegmentInRoi()
            written = self.getSegment(segmentationNode, targetId, volumeNode)
            normal = self.getViewNormal(sliceNode)
            roi = get_roi_from_matrix(slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToWorldMatrix()),
                                      roiNode.GetSize())
            position = [0.0, 0.0, 0.0]
            negativeNode.GetNthControlPointPositionWorld(0, position)
            points = [MarkupsPoint(tuple(position), False)]  # negative by its list's name
            self.assertEqual(logic.markups.read().points, tuple(points))
            expected = self.computeRoiWithCore(checkpoint, array, ijkToRas, roi, points, normal)
            self.assertGreaterEqual(getDice(written, expected), 0.99)
            axis = get_slice_axis(normal, ijkToRas)
            first, last = get_roi_slice_range([roi], ijkToRas, array.shape, axis)
            self.assertEqual(last - first, 4)
            outsideRange = np.ones(array.shape[axis], bool)
            outsideRange[first:last + 1] = False
            self.assertFalse(np.take(written, np.flatnonzero(outsideRange), axis).any())

            self.delayDisplay("One Undo removes the whole ROI result")
            editor.undo()
            self.assertFalse(self.getSegment(segmentationNode, targetId, volumeNode).any())
        finally:
            editor.setActiveEffect(None)  # removes the shortcuts, timers, observers and preview node even on failure
        self.delayDisplay("checkMarkupsRoiSegmentInRoiUndo passed")

    def prepareRedView(self, volumeNode):
        """The Red view rotated to the volume, centred on the middle voxel: (slice node, IJK->RAS, the
        volume array, RAS of the middle voxel)."""
        sliceNode = slicer.app.layoutManager().sliceWidget("Red").mrmlSliceNode()
        sliceNode.RotateToVolumePlane(volumeNode)
        ijkToRas = self.getIjkToRas(volumeNode)
        array = slicer.util.arrayFromVolume(volumeNode)
        k, j, i = (n // 2 for n in array.shape)
        ras = (ijkToRas @ [i, j, k, 1.0])[:3]
        sliceNode.JumpSliceByCentering(*ras)
        return sliceNode, ijkToRas, array, ras

    def createScene(self):
        import numpy as np
        import SampleData

        volumeNode = SampleData.downloadSample("MRHead")
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        otherId = segmentationNode.GetSegmentation().AddEmptySegment("other")
        targetId = segmentationNode.GetSegmentation().AddEmptySegment("target")
        other = np.zeros(slicer.util.arrayFromVolume(volumeNode).shape, np.uint8)
        other[tuple(slice(n // 4, 3 * n // 4) for n in other.shape)] = 1  # around the click
        slicer.util.updateSegmentBinaryLabelmapFromArray(other, segmentationNode, otherId, volumeNode)
        return volumeNode, segmentationNode, otherId, targetId

    def createTinyCheckpoint(self):
        import torch

        from medicosam.models.checkpoint import export_sam
        from medicosam.models.config import build_sam, get_tiny_config

        torch.manual_seed(0)
        path = os.path.join(slicer.app.temporaryPath, "medicosam-selftest-tiny.pth")
        export_sam(build_sam(get_tiny_config()), path)
        return path

    def createEditor(self, volumeNode, segmentationNode, segmentId, checkpoint):
        from medicosam.effect.settings import CUSTOM_MODEL, EffectSettings
        from medicosam.propagation import PropagationConfig

        editor = slicer.qMRMLSegmentEditorWidget()
        editor.setMRMLScene(slicer.mrmlScene)
        editor.setMRMLSegmentEditorNode(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode"))
        editor.setSegmentationNode(segmentationNode)
        setSource = getattr(editor, "setSourceVolumeNode", None) or editor.setMasterVolumeNode
        setSource(volumeNode)
        editor.setCurrentSegmentID(segmentId)
        editor.setActiveEffectByName("MedicoSAM")
        effect = editor.activeEffect()
        self.assertIsNotNone(effect, "the MedicoSAM effect is not registered")
        settings = EffectSettings(model=CUSTOM_MODEL, custom_checkpoint=checkpoint, device="cpu", fast=False,
                                  propagation=PropagationConfig(max_slices=3, iou_threshold=0.0))
        for name, value in settings.to_parameters().items():
            effect.setParameter(name, value)
        return editor, effect

    @staticmethod
    def getIjkToRas(volumeNode):
        import numpy as np

        matrix = slicer.util.vtkMatrixFromArray(np.eye(4))
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    @staticmethod
    def getViewNormal(sliceNode):
        sliceToRas = sliceNode.GetSliceToRAS()
        return [sliceToRas.GetElement(row, 2) for row in range(3)]

    @staticmethod
    def getSegment(segmentationNode, segmentId, volumeNode):
        return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) > 0

    @staticmethod
    def computeWithCore(checkpoint, array, ijkToRas, ras, normal, settings):
        """The core session alone, given the same click: (segment after apply, after propagation)."""
        import numpy as np

        from medicosam.effect.session import SegmentationSession
        from medicosam.models.checkpoint import load_sam
        from medicosam.predictor import get_volume_predictor

        loaded = load_sam(checkpoint, device="cpu", allow_custom=True)
        predictor = get_volume_predictor(loaded, array, fast=settings.fast)
        session = SegmentationSession(predictor, ijkToRas, refine=settings.refine)
        session.add_point(ras, True, normal)
        segment = np.zeros(array.shape, bool)
        session.apply().apply_to(segment)
        applied = segment.copy()
        session.propagate(settings.propagation, segment).apply_to(segment)
        return applied, segment


    @staticmethod
    def computeRoiWithCore(checkpoint, array, ijkToRas, roi, points, normal):
        """The core session alone, given the same ROI and points: the segment after "Segment in ROI"."""
        import numpy as np

        from medicosam.effect.session import SegmentationSession
        from medicosam.markups import Markups
        from medicosam.models.checkpoint import load_sam
        from medicosam.predictor import get_volume_predictor

        loaded = load_sam(checkpoint, device="cpu", allow_custom=True)
        predictor = get_volume_predictor(loaded, array, fast=False)
        segment = np.zeros(array.shape, bool)
        SegmentationSession(predictor, ijkToRas).segment_in_roi(roi, Markups(points), normal).apply_to(segment)
        return segment


def getDice(a, b):
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total
