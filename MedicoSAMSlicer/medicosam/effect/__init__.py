"""The Slicer effect's application layer, free of Slicer: what the effect decides, tested with pytest.

`controller` owns the model, embedding cache, predictor and sessions; `session` is one segment's state
machine; `settings` the parameters stored on the segment editor node; `worker` the inference thread;
`extent` the VTK-extent arithmetic; `requirements` what the effect must install. The rest of the core
never imports this package (a test keeps it so): it serves the effect only.
"""
