"""Defaults chosen from the model, the data and the device."""

import pytest

from understudy_trainer import hparams

GIB = 1024 ** 3


@pytest.mark.parametrize("n_params,seq,memory,mean,want", [
    (124e6, 1024, 141 * GIB, None, 16),      # padded rows: every example may cost max_seq_len
    (124e6, 1024, 141 * GIB, 1024.0, 16),    # long examples: the same
    (124e6, 1024, 141 * GIB, 128.0, 128),    # short pairs packed: 16K tokens of them
    (124e6, 1024, 141 * GIB, 100.4, 162),    # a mean is rounded up
    (124e6, 1024, 141 * GIB, 4.0, 512),      # capped
    (124e6, 1024, 16 * GIB, 128.0, 64),      # a small GPU: half the tokens
    (1e9, 2048, 80 * GIB, 256.0, 32),        # a bigger model: 8K tokens
    (7e9, 4096, 80 * GIB, 8192.0, 1),        # never below one
])
def test_default_batch_is_sized_by_tokens(n_params, seq, memory, mean, want):
    assert hparams.default_batch_size("cuda", int(n_params), seq, memory, mean) == want
    assert hparams.default_batch_size("cpu", int(n_params), seq, memory, mean) == 8
