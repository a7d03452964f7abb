"""MedicoSAM core: Segment Anything for medical volumes, free of Slicer and of training code.

Heavy imports (torch, segment_anything, SimpleITK) happen inside functions, so importing this
package is cheap and works before torch is installed (the Slicer effect relies on that).
"""

__version__ = "0.1.0"
