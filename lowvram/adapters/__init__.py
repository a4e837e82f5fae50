"""Adapters on the frozen model (`networks`) and the LoRA files users load (`lora_files`)."""
