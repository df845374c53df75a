"""The Home Assistant core process for tests: its own venv, one ``hass`` process, its log.

``ensure_venv()`` runs ``scripts/setup-ha.sh`` (a cache outside the repo, Python 3.13.0 from
pyenv, installed once; a no-op afterwards). :class:`HaProcess` starts
``hass -c <dir> --skip-pip`` with stdout+stderr of every boot appended to ``<dir>/hass.log``
and stops it with SIGTERM (HA's own restart only exits with code 100 and expects a
supervisor, so a restart is a stop and a new process).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO / "scripts" / "setup-ha.sh"
HA_VERSION = "2025.4.4"
EXIT_NO_PYTHON = 3  # setup-ha.sh: pyenv's Python 3.13.0 is missing


class HomeAssistantError(RuntimeError):
    """HA did not start, or a call to it failed."""


class HomeAssistantUnavailable(HomeAssistantError):
    """The HA venv cannot be built on this machine (e.g. no Python 3.13.0)."""


def ensure_venv(timeout: float = 1800) -> Path:
    """Run ``scripts/setup-ha.sh`` (a no-op when installed); return the venv path."""
    try:
        result = subprocess.run(
            [str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise HomeAssistantError(f"setup-ha.sh took over {timeout:.0f}s") from e
    if result.returncode == EXIT_NO_PYTHON:
        raise HomeAssistantUnavailable(result.stderr.strip())
    if result.returncode != 0:
        raise HomeAssistantUnavailable(
            f"setup-ha.sh failed ({result.returncode}):\n{result.stderr[-4000:]}"
        )
    venv = subprocess.run(
        [str(SETUP_SCRIPT), "--print-venv"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Path(venv)


def child_env() -> dict[str, str]:
    """Our environment minus what would make HA's Python pick up Roost's packages."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


class HaProcess:
    """One ``hass`` process on ``config_dir`` (none until :meth:`spawn`)."""

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.config_dir / "hass.log"

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def spawn(self, venv: Path) -> None:
        argv = [
            str(venv / "bin" / "hass"),
            "--config",
            str(self.config_dir),
            "--skip-pip",
            "--log-no-color",
        ]
        with self.log_path.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=self.config_dir,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        """Raise (with the log's tail) if the process is not running."""
        if self.popen is None or self.popen.poll() is not None:
            code = None if self.popen is None else self.popen.returncode
            raise HomeAssistantError(f"hass exited ({code}):\n{self.log_tail()}")

    def terminate(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL to the process group after ``timeout``."""
        popen, self.popen = self.popen, None
        if popen is None or popen.poll() is not None:
            return
        popen.send_signal(signal.SIGTERM)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.wait()
