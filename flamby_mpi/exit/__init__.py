"""How a run ends: user mistakes and their exit code 2 (`errors`), the one failure template
and how a failing rank ends the job (`failures`), SIGTERM/SIGINT with its grace timer and exit
128 + the signal (`preemption`), and the launcher's normal end without the interpreter's teardown
(`fast_exit`). Second floor: it imports only the standard library, `flamby_mpi.registry` and the
package's face, so that everything above may report a failure.
"""
