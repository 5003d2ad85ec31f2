"""Stage 3, train: a LoRA adapter on the base model with Multiple Negatives Ranking loss.

data loads and batches triplets; loop is the training loop; checkpoints saves and resumes;
runtime picks devices, threads and distributed set-up.
"""
