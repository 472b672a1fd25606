"""The metrics log: back to what a checkpoint covers on resume; only the main process
writes, every process counts."""

from spherear.train.metrics import MetricsLog, read_metrics


def test_the_log_keeps_what_a_checkpoint_covers(tmp_path):
    log = MetricsLog(tmp_path, enabled=True)
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 1 / step})
    assert log.lines == 3
    log.keep(2)  # a run resumed from a checkpoint written after two lines
    log.write({"step": 3, "loss": 0.25})
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5},
                                      {"step": 3, "loss": 0.25}]  # fmt: skip
    other = MetricsLog(tmp_path / "rank1", enabled=False)
    other.write({"step": 1})
    assert other.lines == 1 and not (tmp_path / "rank1").exists()
