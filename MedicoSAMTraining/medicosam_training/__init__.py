"""MedicoSAM training: Algorithm 1 finetuning, semantic models, evaluation and the demo."""
