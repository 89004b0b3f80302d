"""staging.BackgroundJob: one worker thread serves a rank's checkpoint jobs one after another
(no thread started per round), hands back values and errors in the caller, and ends on close()
and drain() so that a finished rank has its main thread alone."""
import threading

import pytest

from flamby_mpi.checkpoints.staging import BackgroundJob


def _alive(name: str) -> list:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_one_worker_serves_every_job_until_closed():
    job = BackgroundJob("test-job-reuse")
    workers = []
    for value in range(5):
        job.submit(lambda v: (workers.append(threading.current_thread()), v * 2)[1], value)
        assert job.pending
        assert job.wait()[0] == value * 2
        assert not job.pending
    assert len({id(w) for w in workers}) == 1 and workers[0] is not threading.main_thread()
    assert len(_alive("test-job-reuse")) == 1
    job.close()
    assert _alive("test-job-reuse") == []
    # A job after close starts a worker again.
    job.submit(lambda: "again")
    assert job.wait()[0] == "again"
    job.close()
    assert _alive("test-job-reuse") == []


def test_errors_surface_in_wait_and_the_worker_goes_on():
    job = BackgroundJob("test-job-errors")
    job.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        job.wait()
    job.submit(lambda: "fine")
    assert job.wait()[0] == "fine"
    with pytest.raises(RuntimeError, match="no job to wait for"):
        job.wait()
    job.close()


def test_one_job_at_a_time_and_drain_ends_the_worker_after_the_job_in_flight():
    job, release, done = BackgroundJob("test-job-drain"), threading.Event(), []
    job.submit(lambda: (release.wait(30), done.append(True)))
    with pytest.raises(RuntimeError, match="not collected"):
        job.submit(lambda: None)
    threading.Timer(0.2, release.set).start()
    job.drain()  # waits for the job in flight: nothing of it is left running
    assert done == [True] and not job.pending and _alive("test-job-drain") == []


def test_close_leaves_the_outcome_of_the_job_in_flight_for_wait():
    job, release = BackgroundJob("test-job-close"), threading.Event()
    job.submit(lambda: (release.wait(30), "written")[1])
    threading.Timer(0.2, release.set).start()
    job.close()
    assert _alive("test-job-close") == [] and job.pending
    assert job.wait()[0] == "written"
