"""The system's long-lived processes as a drill starts them: ``orchestration worker`` and
``orchestration listen`` (or a drill's own module), each a real subprocess in its own session,
with its output in a log file, killable with SIGKILL and restartable with the same command.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Process"]

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Process:
    """One named process; ``start`` again after ``kill`` runs a new one (``generation`` + 1)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_dir: Path
    generation: int = 0
    _popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.generation}.log"

    @property
    def alive(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    def start(self) -> Process:
        self.generation += 1
        with self.log_path.open("wb") as log:
            self._popen = subprocess.Popen(  # noqa: S603 - our own venv's programs, fixed arguments
                self.argv,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def kill(self) -> None:
        """SIGKILL: no drain, no cleanup, as a crashed host would stop it."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGKILL)
            self._popen.wait(timeout=30)

    def signal(self, signum: int) -> None:
        """Send ``signum`` if the process is alive."""
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signum)

    def stop(self, grace: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self._popen is None or self._popen.poll() is not None:
            return
        self._popen.send_signal(signal.SIGTERM)
        try:
            self._popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def wait_for_output(self, text: str, deadline: float) -> None:
        """Until ``text`` is in this generation's log; raises if the process exits or time runs
        out (``deadline`` in seconds)."""
        end = time.monotonic() + deadline
        while text not in self.log_text():
            if not self.alive:
                raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > end:
                tail = self.log_tail()
                raise RuntimeError(f"{self.name}: no {text!r} after {deadline:g}s\n{tail}")
            await asyncio.sleep(0.2)

    def log_tail(self, lines: int = 25) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
