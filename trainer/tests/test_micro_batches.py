"""How a step's examples are cut into micro-batches: by tokens (on a GPU, or with
UNDERSTUDY_MICRO_BATCH_TOKENS) or by batch_size examples."""

from types import SimpleNamespace

from understudy_trainer import data, hparams
from understudy_trainer.train import Run


def _run(micro_tokens, pack=True, rank=0, world=1, batch_size=4):
    r = Run.__new__(Run)
    r.micro_tokens, r.micro_split = micro_tokens, 1
    r.opts = SimpleNamespace(pack=pack)
    r.dist = SimpleNamespace(rank=rank, world=world)
    r.hp = {"batch_size": batch_size}
    return r


def _examples(*lengths):
    return [data.Example(input_ids=[1] * n, labels=[1] * n, pair_index=i) for i, n in enumerate(lengths)]


def _shape(mbs):
    return [[e.pair_index for e in mb] for mb in mbs]


def test_packed_micro_batches_fill_the_budget_in_order():
    r = _run(100)
    mbs = r._micro_batches(_examples(30, 30, 30, 30, 60, 10, 150, 5))
    assert _shape(mbs) == [[0, 1, 2], [3, 4, 5], [6], [7]]
    # Every micro-batch within the budget but one: an example longer than it goes alone.
    assert [sum(len(e) for e in mb) for mb in mbs] == [90, 100, 150, 5]


def test_short_pairs_share_one_micro_batch_whatever_the_batch_size():
    r = _run(16384, batch_size=4)
    mbs = r._micro_batches(_examples(*[40] * 64))
    assert len(mbs) == 1 and len(mbs[0]) == 64


def test_padded_micro_batches_count_rows_at_the_longest():
    r = _run(100, pack=False)
    # 3 rows padded to 30 = 90; a fourth would be 120.
    assert _shape(r._micro_batches(_examples(10, 30, 20, 10, 10))) == [[0, 1, 2], [3, 4]]
    # One long row makes the others cost as much.
    assert _shape(r._micro_batches(_examples(10, 60, 10))) == [[0], [1], [2]]


def test_ranks_deal_the_step_then_cut_their_share():
    ex = _examples(*[30] * 10)
    shares = [_run(60, rank=k, world=2)._micro_batches(ex) for k in range(2)]
    assert _shape(shares[0]) == [[0, 2], [4, 6], [8]]
    assert _shape(shares[1]) == [[1, 3], [5, 7], [9]]


def test_out_of_memory_halves_the_budget_until_one_example_each():
    r = _run(120)
    ex = _examples(*[30] * 8)
    assert [len(mb) for mb in r._micro_batches(ex)] == [4, 4]
    assert not r._one_example_per_micro_batch(ex)
    r.micro_split = 2
    assert [len(mb) for mb in r._micro_batches(ex)] == [2] * 4
    assert not r._one_example_per_micro_batch(ex)
    r.micro_split = 4
    assert [len(mb) for mb in r._micro_batches(ex)] == [1] * 8
    assert r._one_example_per_micro_batch(ex)


def test_by_examples_when_there_is_no_token_budget():
    r = _run(None, batch_size=3)
    assert _shape(r._micro_batches(_examples(*[500] * 7))) == [[0, 1, 2], [3, 4, 5], [6]]
    r.micro_split = 3
    assert r._one_example_per_micro_batch([])


def test_gpu_budget_by_model_size_and_memory():
    assert hparams.micro_batch_tokens(124e6, 141e9) == 16384
    assert hparams.micro_batch_tokens(1.5e9, 80e9) == 8192
    assert hparams.micro_batch_tokens(7e9, 80e9) == 4096
    assert hparams.micro_batch_tokens(124e6, 16e9) == 8192
