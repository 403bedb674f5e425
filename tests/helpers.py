"""The tiny-checkpoint writers and special-token ids the tests use; they live in
``benchmarks.reference.checkpoints`` (shared with the benchmarks)."""
from benchmarks.reference.checkpoints import (  # noqa: F401 - re-exported for the tests
    BOS_ID, EOS_ID, EOT_ID, LLADA_TEMPLATE, MASK_ID, MOE_SPECIALS, MOE_TEMPLATE, SPECIALS, VOCAB, dense_config,
    dense_tensors, moe_config, moe_tensors, write_checkpoint, write_tokenizer)
