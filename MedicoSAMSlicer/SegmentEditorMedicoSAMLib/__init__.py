"""The MedicoSAM Segment Editor effect (Slicer layer); the logic lives in the `medicosam` core."""

from .SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
