"""flamby_mpi/launch/mpich_shm.py without MPI: which names it reads from a maps file, and that it
removes only those (tests/test_mpi_runs.py and test_lost_peer.py check real jobs)."""
from flamby_mpi.launch import mpich_shm

MAPS = """\
7f0000000000-7f0000100000 rw-s 00000000 00:1a 1234 /dev/shm/mpich_shm_a357ad6c_0
7f0000100000-7f0000200000 rw-s 00000000 00:1a 1235 /dev/shm/mpich_shm_b0b5d92c_0 (deleted)
7f0000200000-7f0000300000 rw-s 00000000 00:1a 1236 /dev/shm/vader_segment.vm.1.0
7f0000300000-7f0000301000 r--p 00000000 08:01 99 /usr/lib/libc.so.6
7f0000400000-7f0000401000 rw-p 00000000 00:00 0
"""


def test_only_mpich_segments_still_named_are_read(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(MAPS)
    assert mpich_shm.mapped_segments(str(maps)) == ["/dev/shm/mpich_shm_a357ad6c_0"]
    assert mpich_shm.mapped_segments(str(tmp_path / "absent")) == []


def test_a_name_already_gone_or_not_removable_is_left_quietly(monkeypatch):
    monkeypatch.setattr(mpich_shm, "mapped_segments", lambda: ["/dev/shm/mpich_shm_gone_0", "/proc/version"])
    mpich_shm.unlink_mapped_segments()  # FileNotFoundError, then PermissionError/EROFS: no error
