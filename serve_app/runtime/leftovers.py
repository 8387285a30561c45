"""Processes a run leaves behind: none after a stop, none stale on the port at a start.

Ray Serve's HAProxy manager actor starts HAProxy (`haproxy -db -f <dir>/<node>/haproxy.cfg`)
as its child, an LLM replica starts vLLM's engine processes, and Ray gives each worker a
process group of its own. Stopped with SIGTERM to its whole process group, `python -m
serve_app serve` saw Ray's processes stop before Serve could stop HAProxy or the replicas
their engines: the orphaned HAProxy kept the HTTP port (the next start could not bind it,
clients got its plain-text errors) and an orphaned vLLM engine kept 2.7 GiB. The runner
cannot clean up then (Ray ends a driver whose GCS stops answering, without running its exit
code). So the runner starts a watcher (`python -m serve_app.runtime.leftovers PID`, in a
session of its own, out of reach of the group's signal) that notes every process under the
runner and, once the runner has exited however it exited, stops those still running. A start
first clears an orphaned Serve HAProxy from its port (one whose Serve actor is gone), or
fails saying which process holds the port.
"""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

# Where Ray Serve writes HAProxy's config (RAY_SERVE_HAPROXY_CONFIG_FILE_LOC, Ray's default).
HAPROXY_CONFIG_DIR = Path(
    os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "/tmp/haproxy-serve/haproxy.cfg")
).parent
# Ray workers' process titles: Serve's actors that start HAProxy.
HAPROXY_PARENTS = ("ray::HAProxyManager", "ray::ProxyActor")
KILL_WAIT_S = 5.0
WATCH_EVERY_S = 1.0
EXIT_GRACE_S = 10.0


class PortInUseError(RuntimeError):
    """The HTTP port is held by a process this service must not stop."""


def is_serve_haproxy(process: psutil.Process) -> bool:
    """An HAProxy started by Ray Serve: its config file is under Serve's HAProxy folder."""
    try:
        args = process.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    if not args or Path(args[0]).name != "haproxy" or "-f" not in args[:-1]:
        return False
    config = Path(args[args.index("-f") + 1])
    return config.is_relative_to(HAPROXY_CONFIG_DIR)


def is_orphaned(process: psutil.Process) -> bool:
    """Whether the Serve actor that started it is gone."""
    try:
        parent = process.parent()
        title = " ".join(parent.cmdline()) if parent is not None else ""
        return not title.startswith(HAPROXY_PARENTS)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return True


def port_holders(port: int) -> list[psutil.Process]:
    """The processes listening on TCP `port`."""
    pids = {
        c.pid
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid
    }
    return [psutil.Process(pid) for pid in sorted(pids) if psutil.pid_exists(pid)]


def clear_port(port: int) -> list[str]:
    """Stop orphaned Serve HAProxies listening on `port` (what was done, for the log); raise
    PortInUseError if anything else holds it."""
    done = []
    for process in port_holders(port):
        if not (is_serve_haproxy(process) and is_orphaned(process)):
            raise PortInUseError(
                f"Port {port} is in use by pid {process.pid} ({' '.join(process.cmdline())}). "
                "Stop it, or set PORT to a free port."
            )
        stop([process])
        done.append(
            f"Stopped HAProxy pid {process.pid}, left on port {port} by an earlier run of "
            "this service whose Ray had stopped."
        )
    return done


def stop(processes: list[psutil.Process]) -> None:
    """SIGTERM, then SIGKILL what is still alive after KILL_WAIT_S."""
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.terminate()
    _, alive = psutil.wait_procs(processes, timeout=KILL_WAIT_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


class Reaper:
    """Remembers the processes started under a process; stops those left running."""

    def __init__(self, root: int | None = None) -> None:
        self._root = psutil.Process(root)
        self._seen: dict[tuple[int, float], psutil.Process] = {}

    def remember(self) -> None:
        """Note the root's descendants, this process aside (call it while they run: replicas
        are replaced, HAProxy reloads start new processes)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            for process in self._root.children(recursive=True):
                if process.pid != os.getpid():
                    with contextlib.suppress(psutil.NoSuchProcess):
                        self._seen[(process.pid, process.create_time())] = process

    def reap(self) -> list[str]:
        """Stop every remembered process still running after EXIT_GRACE_S (those on their
        way out of a clean stop get that long); their names."""
        self.remember()
        running = [process for process in self._seen.values() if _running(process)]
        _, alive = psutil.wait_procs(running, timeout=EXIT_GRACE_S)
        alive = [process for process in alive if _running(process)]
        names = []
        for process in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                names.append(process.name())
        stop(alive)
        return names

    def root_running(self) -> bool:
        return _running(self._root)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def start_watcher() -> subprocess.Popen[bytes]:
    """A watcher of this process, in a session of its own (see the module's docstring)."""
    command = [sys.executable, "-m", "serve_app.runtime.leftovers", str(os.getpid())]
    return subprocess.Popen(command, start_new_session=True)


def watch(pid: int) -> list[str]:
    """Until process `pid` exits, note the processes under it; then stop those still
    running. Their names."""
    reaper = Reaper(pid)
    while reaper.root_running():
        reaper.remember()
        time.sleep(WATCH_EVERY_S)
    left = reaper.reap()
    if left:
        print(f"Stopped what the stopped run left running: {', '.join(left)}", flush=True)
    return left


if __name__ == "__main__":
    watch(int(sys.argv[1]))
