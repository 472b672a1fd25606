import signal

from spherear.errors import SpherearError, Stopped


def test_a_stopped_run_exits_with_128_plus_its_signal():
    stopped = Stopped("SIGTERM at step 3: ...", signal.SIGTERM)
    assert isinstance(stopped, SpherearError) and stopped.exit_code == 143
