"""Several hosts on one machine: network namespaces joined by a bridge.

Host k is network namespace `<prefix>n<k>` with one veth interface (address
10.<a>.<b>.<10+k>/24) plugged into a bridge in the root namespace that holds
10.<a>.<b>.1. No route leaves the subnet: processes in the namespaces reach
each other and the bridge, nothing else. MPICH's mpiexec runs in the root
namespace with `-iface <bridge>` (so the proxies call back on the bridge's
address) and `-launcher ssh -launcher-exec <script>`: the script takes ssh's
arguments (`-x <host> <command>`) and runs the command with
`ip netns exec <namespace of host> unshare --uts sh -c "hostname <host> && <command>"`
(each host also has its own host name, which Open MPI needs to tell hosts apart).
Open MPI's mpirun uses the same script as its ssh (`--prtemca plm_ssh_agent`).
Host names are looked up only by that script, so nothing on the machine
(/etc/hosts...) is changed.
`stop()` ends every process inside the namespaces and removes what `start()` made.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, List

from .facility import end_processes, missing, require_root


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


class NamespaceHosts:
    def __init__(self, count: int = 3):
        self.tag = f"fm{os.getpid() % 10000:04d}"  # interface names stay under 15 characters
        self.count = count
        self.hosts = [f"{self.tag}h{k}" for k in range(1, count + 1)]  # the names in host files
        self.namespaces = {h: f"{self.tag}n{k}" for k, h in enumerate(self.hosts, 1)}
        self.veths = {h: f"{self.tag}v{k}" for k, h in enumerate(self.hosts, 1)}
        self.bridge = f"{self.tag}br"
        self.subnet = None
        self.addresses: Dict[str, str] = {}
        self.dir = Path(tempfile.mkdtemp(prefix="flamby-hosts-"))
        self.launcher = self.dir / "netns_launcher.sh"

    @staticmethod
    def check_available():
        require_root("network namespaces")
        if shutil.which("ip") is None:
            missing("the ip command is not installed: apt-get install iproute2 (.ci/run does)")
        probe = f"fmprobe{os.getpid() % 100000}"
        done = _ip("netns", "add", probe, check=False)
        if done.returncode != 0:
            missing(f"cannot create network namespaces here: {done.stderr.strip()}")
        _ip("netns", "del", probe, check=False)

    def _pick_subnet(self) -> str:
        used = _ip("-4", "addr").stdout + _ip("-4", "route").stdout
        rng = random.Random(os.getpid())
        for _ in range(100):
            subnet = f"10.{rng.randint(200, 250)}.{rng.randint(0, 255)}"
            if f"{subnet}." not in used:
                return subnet
        raise RuntimeError("no free 10.x.y.0/24 subnet for the test hosts")

    def start(self) -> "NamespaceHosts":
        try:
            self.subnet = self._pick_subnet()
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for k, host in enumerate(self.hosts, 1):
                ns, veth = self.namespaces[host], self.veths[host]
                address = f"{self.subnet}.{10 + k}"
                _ip("netns", "add", ns)
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _ip("link", "set", veth, "master", self.bridge, "up")
                _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
                _ip("-n", ns, "link", "set", "eth0", "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                self.addresses[host] = address
            self._write_launcher()
        except BaseException:
            self.stop()
            raise
        return self

    def _write_launcher(self):
        cases = "\n".join(f"    {h}) ns={ns} ;;" for h, ns in self.namespaces.items())
        self.launcher.write_text(f"""#!/bin/sh
# Stands in for ssh: mpiexec calls it as `<this> -x <host> <command>`.
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1
shift
case "$host" in
{cases}
    *) echo "netns launcher: unknown host $host" >&2; exit 255 ;;
esac
# Its own UTS namespace too, named after the host: Open MPI tells hosts apart by host name.
exec ip netns exec "$ns" unshare --uts sh -c "hostname $host && $*"
""")
        self.launcher.chmod(0o755)

    def host_file(self, slots: List[int]) -> Path:
        """A host file in mpi_host_file.example's format (MPICH's `host:slots`)."""
        path = self.dir / "mpi_host_file"
        path.write_text("".join(f"{h}:{n}\n" for h, n in zip(self.hosts, slots, strict=True)))
        return path

    def mpiexec_flags(self, host_file: Path) -> List[str]:
        """MPICH's mpiexec: the host file, the bridge for its proxies, the script as ssh."""
        return ["-f", str(host_file), "-iface", self.bridge,
                "-launcher", "ssh", "-launcher-exec", str(self.launcher)]

    def open_mpi_host_file(self, slots: List[int]) -> Path:
        """The same hosts in Open MPI's format (`host slots=N`)."""
        path = self.dir / "openmpi_host_file"
        path.write_text("".join(f"{h} slots={n}\n" for h, n in zip(self.hosts, slots, strict=True)))
        return path

    def mpirun_flags(self, host_file: Path) -> List[str]:
        """Open MPI's mpirun: the host file, the script as ssh, MPI and its launcher on the subnet only."""
        subnet = f"{self.subnet}.0/24"
        return ["--hostfile", str(host_file), "--prtemca", "plm_ssh_agent", str(self.launcher),
                "--prtemca", "oob_tcp_if_include", subnet, "--mca", "btl_tcp_if_include", subnet]

    def namespace_of(self, pid: int) -> str:
        """The host whose namespace holds process pid ('' for the root namespace or a gone process)."""
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return ""
        for host, ns in self.namespaces.items():
            try:
                if os.stat(f"/run/netns/{ns}").st_ino == inode:
                    return host
            except OSError:
                continue
        return ""

    def bytes_through(self, host: str) -> int:
        """Bytes sent plus received by a host's interface (counted at its bridge port)."""
        stats = Path("/sys/class/net") / self.veths[host] / "statistics"
        return sum(int((stats / name).read_text()) for name in ("rx_bytes", "tx_bytes"))

    def stop(self):
        for ns in self.namespaces.values():
            done = _ip("netns", "pids", ns, check=False)
            if done.returncode == 0:
                end_processes(int(p) for p in done.stdout.split())
        for host, ns in self.namespaces.items():
            _ip("link", "del", self.veths[host], check=False)  # removes its peer too
            _ip("netns", "del", ns, check=False)
        _ip("link", "del", self.bridge, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftovers(self) -> List[str]:
        """What of ours is still on the machine (namespaces, interfaces): should be empty after stop()."""
        found = [ns for ns in self.namespaces.values() if ns in _ip("netns", "list").stdout.split()]
        links = _ip("-o", "link").stdout
        found += [name for name in [self.bridge, *self.veths.values()] if f" {name}:" in links or
                  f" {name}@" in links]
        return found
