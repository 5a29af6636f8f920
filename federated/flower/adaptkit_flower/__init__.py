"""adaptkit's Flower app: LoRA-correct aggregation of adaptkit nodes' updates."""
