"""Stage 2, generate: prompt an LLM backend for paraphrases and hard negatives, validate, write triplets.

prompting builds the chat and parses/validates replies; pipeline drives backends with resume;
triplets_file reads and writes the JSONL rows.
"""
