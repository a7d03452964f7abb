"""SA-Med2D-20M at full scale: the compact index of its v1 JSON, the v2 HDF5 shards, the converter.

`index` and `stream` need numpy only; `shards` and `convert` need h5py; `cli` imports none of
them until a command runs.
"""
