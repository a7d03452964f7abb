"""What the effect's Slicer files share: VTK images and matrices as numpy, labelmaps, dialogs, shortcut keys."""

import qt
import slicer
import vtk


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
