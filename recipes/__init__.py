"""Recipes that produce the embedded checkpoints in ``server/assets/``: a synthetic instruction suite
(``tasks``), its tokenizers (``tokenizer_build``) and the LLaDA SFT trainer (``train_tiny``)."""
