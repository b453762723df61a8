import io

from understudy_trainer import progress


def step(**extra):
    out = io.StringIO()
    em = progress.Emitter(out, clock=lambda: 1764370000.0)
    em.emit("step", step=1, total_steps=2, epoch=0.5, loss=1.5, learning_rate=1e-3, tokens_per_second=10.0,
            eta_seconds=1.0, **extra)
    return progress.parse_line(out.getvalue())


def test_step_carries_optional_gpu_sample():
    event, why = step(gpu_utilization=0.87, gpu_memory_bytes=12 * 2**30)
    assert why is None
    assert event["gpu_utilization"] == 0.87 and event["gpu_memory_bytes"] == 12 * 2**30


def test_step_without_gpu_sample_is_valid():
    event, why = step()
    assert why is None and "gpu_utilization" not in event and "gpu_memory_bytes" not in event


def test_bad_gpu_sample_is_refused():
    for bad in ({"gpu_utilization": "high"}, {"gpu_memory_bytes": 1.5}, {"gpu_memory_bytes": True}):
        line = ('{"v":1,"event":"step","time":1.0,"step":1,"total_steps":1,"epoch":1,"loss":1,"learning_rate":1,'
                '"tokens_per_second":1,"eta_seconds":0,"' + next(iter(bad)) + '":'
                + {str: '"high"', float: "1.5", bool: "true"}[type(next(iter(bad.values())))] + "}")
        event, why = progress.parse_line(line)
        assert event is None and "gpu_" in why


def test_gpu_sample_on_this_machine():
    sample = progress.gpu_sample(0, nvidia_smi="/nonexistent/nvidia-smi")
    import torch
    if not torch.cuda.is_available():
        assert sample == {}
        return
    assert 0 <= sample.get("gpu_utilization", 0) <= 1
    assert sample.get("gpu_memory_bytes", 1) > 0
    progress.validate({"v": 1, "event": "step", "time": 1.0, "step": 1, "total_steps": 1, "epoch": 1.0, "loss": 1.0,
                       "learning_rate": 1.0, "tokens_per_second": 1.0, "eta_seconds": 0.0, **sample})
