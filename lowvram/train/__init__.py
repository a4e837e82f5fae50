"""Training: the loop, the objective, the conditioning and the LoRA export."""
