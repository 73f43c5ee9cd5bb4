"""Check what a real TensorBoard server shows for a log directory, over its HTTP API.

Reading event files directly cannot tell whether TensorBoard's plugins understand them (the
HParams tab, for one, needs the experiment summary written in a particular way), so this starts
``tensorboard`` on loopback, asks it what a user would see and always stops it again.

Usage: ``python scripts/tensorboard_check.py [LOGDIR] [--expect-runs 3]`` (``make tensorboard-check``); LOGDIR defaults
to the newest sweep under ``logs/multiruns/`` and the expected number of runs to the number of
finished runs (metrics.json) under LOGDIR.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nucseg.compare.collect import DEFAULT_SWEEPS, collect_runs, newest_sweep

DEFAULT_EXPECT_TAGS = ("train/loss", "val/loss", "val/dice", "val/iou", "val/accuracy")
DEFAULT_EXPECT_HPARAMS_METRICS = ("test/dice",)
_ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
# No proxy for loopback, whatever the environment says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class TensorBoardReport:
    """What the server reported.

    Attributes:
        url: the server's base URL (gone once the check returns).
        runs: run names (folders relative to the logdir).
        active_plugins: plugins the server marks enabled (tabs a user sees).
        scalar_tags: run -> scalar tags.
        image_tags: run -> image tags.
        custom_scalar_charts: Custom Scalars category -> chart titles.
        hparams: hyperparameter names in the HParams tab.
        hparams_metrics: metric tags in the HParams tab.
        hparams_sessions: session group (run) -> metric tag -> value.
    """

    url: str = ""
    runs: list[str] = field(default_factory=list)
    active_plugins: list[str] = field(default_factory=list)
    scalar_tags: dict[str, list[str]] = field(default_factory=dict)
    image_tags: dict[str, list[str]] = field(default_factory=dict)
    custom_scalar_charts: dict[str, list[str]] = field(default_factory=dict)
    hparams: list[str] = field(default_factory=list)
    hparams_metrics: list[str] = field(default_factory=list)
    hparams_sessions: dict[str, dict[str, float]] = field(default_factory=dict)

    def runs_with_tags(self, tags: Sequence[str]) -> list[str]:
        """Runs whose scalar tags include every one of ``tags``."""
        return [run for run, found in self.scalar_tags.items() if set(tags) <= set(found)]

    def sessions_with_metrics(self, metrics: Sequence[str]) -> list[str]:
        """HParams sessions that report every one of ``metrics``."""
        return [name for name, values in self.hparams_sessions.items() if set(metrics) <= set(values)]

    def problems(
        self,
        expect_runs: int = 1,
        expect_tags: Sequence[str] = DEFAULT_EXPECT_TAGS,
        expect_hparams_metrics: Sequence[str] = DEFAULT_EXPECT_HPARAMS_METRICS,
    ) -> list[str]:
        """One line per unmet expectation; empty when the logs look as they should."""
        found: list[str] = []
        tagged = self.runs_with_tags(expect_tags)
        if len(tagged) < expect_runs:
            found.append(f"{len(tagged)} of {expect_runs} expected runs have scalar tags {list(expect_tags)}")
        sessions = self.sessions_with_metrics(expect_hparams_metrics)
        if len(sessions) < expect_runs:
            wanted = list(expect_hparams_metrics)
            found.append(f"{len(sessions)} of {expect_runs} expected HParams sessions report {wanted}")
        return found


class TensorBoardServer:
    """``tensorboard --logdir DIR`` on 127.0.0.1 and a free port, as a context manager.

    The server is stopped on exit even when the body raises, so a failed check leaves no
    process behind.
    """

    def __init__(self, logdir: str | Path, port: int | None = None, startup_timeout: float = 60.0) -> None:
        self.logdir = Path(logdir)
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tensorboard-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> TensorBoardServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server and wait until it answers; retry a port another process took first."""
        if not self.logdir.is_dir():
            raise FileNotFoundError(f"{self.logdir}: no such log directory")
        for attempt in range(3):
            port = self.port if self.port is not None and attempt == 0 else _free_port()
            self.port = port
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "tensorboard.main",
                    "--logdir", str(self.logdir),
                    "--host", "127.0.0.1",
                    "--port", str(port),
                    "--load_fast", "false",  # the pure-Python reader: no extra data-server process
                    "--reload_interval", "2",
                ],
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            if self._wait_until_up():
                return
            self.stop()
        raise RuntimeError(f"{self.logdir}: tensorboard did not start; its log ends: {self.log_tail()}")

    def _wait_until_up(self) -> bool:
        """Poll ``/data/plugins_listing`` until it answers (True) or the process exits (False)."""
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            try:
                get_json(f"{self.url}/data/plugins_listing", timeout=2.0)
                return True
            except (OSError, ValueError):
                time.sleep(0.3)
        return False

    def stop(self) -> None:
        """Terminate the server (kill it after 10 s) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.flush()

    def log_tail(self, chars: int = 600) -> str:
        """The end of the server's output, for error messages."""
        text = Path(self._log.name).read_text(encoding="utf-8", errors="replace")
        return " | ".join(text[-chars:].strip().splitlines())

    def __del__(self) -> None:
        try:
            self._log.close()
            Path(self._log.name).unlink(missing_ok=True)
        except Exception:  # interpreter shutdown; nothing useful to do
            pass


def get_json(url: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> Any:
    """GET ``url`` and parse its JSON body (raises OSError or ValueError on failure)."""
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with _OPENER.open(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def read_report(url: str) -> TensorBoardReport:
    """Ask a running server for runs, tags, the Custom Scalars layout and HParams data."""
    report = TensorBoardReport(url=url)
    listing = get_json(f"{url}/data/plugins_listing")
    report.active_plugins = sorted(name for name, info in listing.items() if info.get("enabled"))
    report.runs = list(get_json(f"{url}/data/runs"))
    scalars = get_json(f"{url}/data/plugin/scalars/tags")
    report.scalar_tags = {run: sorted(tags) for run, tags in scalars.items()}
    images = _optional(f"{url}/data/plugin/images/tags", {})
    report.image_tags = {run: sorted(tags) for run, tags in images.items()}
    layout = _optional(f"{url}/data/plugin/custom_scalars/layout", {})
    report.custom_scalar_charts = {
        category.get("title", ""): [chart.get("title", "") for chart in category.get("chart", [])]
        for category in layout.get("category", [])
    }
    experiment = _optional(
        f"{url}/data/plugin/hparams/experiment", {}, {"request": json.dumps({"experimentName": ""})}
    )
    report.hparams = [info["name"] for info in experiment.get("hparamInfos", [])]
    report.hparams_metrics = [info["name"]["tag"] for info in experiment.get("metricInfos", [])]
    if report.hparams_metrics:
        request = {"experimentName": "", "allowedStatuses": _ALL_STATUSES, "startIndex": 0, "sliceSize": 1000}
        groups = _optional(f"{url}/data/plugin/hparams/session_groups", {}, {"request": json.dumps(request)})
        report.hparams_sessions = {
            group["name"]: {value["name"]["tag"]: value["value"] for value in group.get("metricValues", [])}
            for group in groups.get("sessionGroups", [])
        }
    return report


def _optional(url: str, default: Any, params: dict[str, str] | None = None) -> Any:
    """GET JSON from a plugin route that answers 4xx while it has no data yet."""
    try:
        return get_json(url, params)
    except urllib.error.HTTPError:
        return default


def check_tensorboard(
    logdir: str | Path,
    expect_runs: int = 1,
    expect_tags: Sequence[str] = DEFAULT_EXPECT_TAGS,
    expect_hparams_metrics: Sequence[str] = DEFAULT_EXPECT_HPARAMS_METRICS,
    timeout: float = 90.0,
    port: int | None = None,
) -> TensorBoardReport:
    """Start TensorBoard on ``logdir``, poll until the expectations hold or ``timeout`` passes.

    TensorBoard loads event files in the background after it starts answering, so one early
    answer can miss runs; polling returns as soon as the data is complete.

    Returns:
        The last report read; call :meth:`TensorBoardReport.problems` to judge it.
    """
    with TensorBoardServer(logdir, port=port) as server:
        return wait_for_report(server.url, expect_runs, expect_tags, expect_hparams_metrics, timeout)


def wait_for_report(
    url: str,
    expect_runs: int = 1,
    expect_tags: Sequence[str] = DEFAULT_EXPECT_TAGS,
    expect_hparams_metrics: Sequence[str] = DEFAULT_EXPECT_HPARAMS_METRICS,
    timeout: float = 90.0,
) -> TensorBoardReport:
    """Read reports from a running server until the expectations hold or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        report = read_report(url)
        complete = not report.problems(expect_runs, expect_tags, expect_hparams_metrics)
        if complete or time.monotonic() > deadline:
            return report
        time.sleep(1.0)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: exit 0 when every expectation holds, 1 otherwise."""
    parser = argparse.ArgumentParser(
        prog="python scripts/tensorboard_check.py",
        description="Start tensorboard on LOGDIR (loopback), read its HTTP API, stop it, report.",
    )
    add = parser.add_argument
    add("logdir", type=Path, nargs="?", help="log folder (default: the newest sweep in logs/multiruns/)")
    add("--expect-runs", type=int, help="runs that must have the tags and HParams (default: finished runs)")
    add("--expect-tag", action="append", help=f"scalar tag each run needs ({list(DEFAULT_EXPECT_TAGS)})")
    add(
        "--expect-hparams-metric",
        action="append",
        help=f"HParams metric each run must report (default {list(DEFAULT_EXPECT_HPARAMS_METRICS)})",
    )
    add("--timeout", type=float, default=90.0, help="seconds to wait for complete data")
    add("--json", action="store_true", help="print the whole report as JSON")
    args = parser.parse_args(argv)

    tags = args.expect_tag or list(DEFAULT_EXPECT_TAGS)
    metrics = args.expect_hparams_metric or list(DEFAULT_EXPECT_HPARAMS_METRICS)
    logdir = args.logdir or newest_sweep()
    if logdir is None:
        print(f"error: {DEFAULT_SWEEPS}: no sweep folder; pass a log folder", file=sys.stderr)
        return 1
    try:
        expect_runs = args.expect_runs or max(1, sum(run.finished for run in collect_runs([logdir])))
        report = check_tensorboard(logdir, expect_runs, tags, metrics, timeout=args.timeout)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        _print_summary(report)
    problems = report.problems(expect_runs, tags, metrics)
    for problem in problems:
        print(f"error: {logdir}: {problem}", file=sys.stderr)
    return 1 if problems else 0


def _print_summary(report: TensorBoardReport) -> None:
    """A short human-readable account of the report."""
    print(f"tabs with data: {', '.join(report.active_plugins)}")
    for run in report.runs:
        scalars = report.scalar_tags.get(run, [])
        images = report.image_tags.get(run, [])
        metrics = report.hparams_sessions.get(run, {})
        shown = ", ".join(f"{tag}={value:.4f}" for tag, value in sorted(metrics.items()))
        counts = f"{len(scalars)} scalar tags, {len(images)} image tags"
        print(f"run {run}: {counts}; hparams metrics: {shown or '-'}")
    charts = sum(len(titles) for titles in report.custom_scalar_charts.values())
    print(f"custom scalars: {len(report.custom_scalar_charts)} categories, {charts} charts")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
