"""SAM models: architectures, the registry of named checkpoints, downloads, loading and export."""
