"""The preview: SAM's mask of the current slice, drawn in the segment's colour until it is applied."""

import slicer

from SegmentEditorMedicoSAMLib.SlicerHelpers import createLabelmap, getImageArray


class PreviewDisplay:
    """A temporary segmentation with one segment, "preview": never saved with the scene and hidden from node
    selectors (the prompts need no display of their own: they are the segment's markups nodes)."""

    def __init__(self, scriptedEffect):
        self.scriptedEffect = scriptedEffect
        self.node = None

    def create(self):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedicoSAM preview")
        node.SetSaveWithScene(False)
        node.SetHideFromEditors(True)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSaveWithScene(False)
        node.GetSegmentation().AddEmptySegment("preview", "MedicoSAM preview")
        node.GetDisplayNode().SetOpacity2DFill(0.35)
        node.GetDisplayNode().SetOpacity2DOutline(1.0)
        self.node = node

    def remove(self):
        if self.node is not None and self.node.GetScene() is not None:  # not removed with the scene
            self.node.GetScene().RemoveNode(self.node)
        self.node = None

    def show(self, preview, segmentationNode, segmentId):
        """Draw a `session.SlicePreview` over the segmentation, in the colour of its segment `segmentId`."""
        from medicosam.effect.extent import get_extent_shape

        node = self.node
        if node is None:
            return
        node.SetAndObserveTransformNodeID(segmentationNode.GetTransformNodeID())
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        node.GetSegmentation().GetSegment("preview").SetColor(segment.GetColor())
        reference = self.scriptedEffect.referenceGeometryImage()
        block = preview.get_block()
        image = createLabelmap(reference, block.get_extent(get_extent_shape(reference.GetExtent()),
                                                           reference.GetExtent()[::2]))
        getImageArray(image)[:] = block.get_array()
        image.Modified()
        slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)

    def clear(self):
        if self.node is not None:
            empty = createLabelmap(self.scriptedEffect.referenceGeometryImage(), [0, -1, 0, -1, 0, -1])
            slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
                empty, self.node, "preview", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
