"""The ``anytus`` command line, in process: options, units, help, version, refusals.

What serving does is in ``test_serve.py`` (real processes); this is the part that answers before
any server starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import pytest

import anytus
from anytus._cli import _parser, auto_workers, main, parse_duration, parse_size, worker_cpus
from anytus._serve import WorkerLoads, pin_to_cpu


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"anytus {anytus.__version__}"


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("1048576", 1 << 20),
        ("10G", 10 << 30),
        ("10g", 10 << 30),
        ("10GB", 10 << 30),
        ("10GiB", 10 << 30),
        ("500M", 500 << 20),
        ("1.5T", 3 << 39),
        ("64k", 64 << 10),
        (" 2 K ", 2048),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1", "10X", "1e9", "10 G B", "ten"])
def test_bad_sizes(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a size"):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0.5", 0.5),
        ("30s", 30.0),
        ("30m", 1800.0),
        ("24h", 86400.0),
        ("7d", 604800.0),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "-5", "5w", "1h30m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="not a duration"):
        parse_duration(text)


def test_max_size_with_a_unit_reaches_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    args = _parser().parse_args(["serve", "--max-size", "10G", "--expire-after", "1d"])
    assert args.max_size == 10 << 30
    assert args.expire_after == 86400.0
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--max-size", "lots"])
    assert "not a size: 'lots'" in capsys.readouterr().err


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(commands.choices)


@pytest.mark.parametrize("command", ["serve", "cleanup"])
def test_every_option_has_help(command: str) -> None:
    parser = _subcommands(_parser())[command]
    for action in parser._actions:
        assert action.help, f"{command} {action.option_strings or action.dest} has no help text"


def test_help_mentions_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for option in ("--max-size", "--base-path", "--shutdown-timeout", "--log-format", "10G"):
        assert option in text


@pytest.mark.parametrize(
    ("module", "option"), [("trio", ["--backend", "trio"]), ("uvloop", ["--loop", "uvloop"])]
)
def test_an_option_without_its_extra_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: object,
    module: str,
    option: list[str],
) -> None:
    # None in sys.modules is how the import system spells "not importable"
    monkeypatch.setitem(sys.modules, module, None)
    status = main(["serve", *option, "--dir", str(tmp_path), "--port", "0"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = f"anytus: {' '.join(option)} needs {module}, which is not installed: "
    assert err == [expected + f"pip install 'anytus[{module}]'"]


def test_uvloop_is_for_asyncio(capsys: pytest.CaptureFixture[str], tmp_path: object) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--loop", "uvloop", "--backend", "trio", "--dir", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "--loop uvloop is for --backend asyncio" in capsys.readouterr().err


def test_workers_auto_is_one_per_usable_cpu() -> None:
    """``--workers`` defaults to ``auto``: one process per CPU this process may run on, as tusd
    uses every core; a bucket without Redis gets one (its locks hold within one process)."""
    parser = _subcommands(_parser())["serve"]
    assert parser.parse_args([]).workers is None
    assert parser.parse_args(["--workers", "auto"]).workers is None
    assert parser.parse_args(["--workers", "3"]).workers == 3
    assert auto_workers(parser.parse_args([])) == len(os.sched_getaffinity(0))
    assert auto_workers(parser.parse_args(["--s3-bucket", "b"])) == 1
    redis = ["--s3-bucket", "b", "--redis", "redis://127.0.0.1:1"]
    assert auto_workers(parser.parse_args(redis)) == len(os.sched_getaffinity(0))


def test_pin_workers_gives_each_worker_a_cpu_when_each_can_have_one() -> None:
    """``--pin-workers`` defaults to pinning when there are several workers and no more of them
    than usable CPUs; a lone worker, or more workers than CPUs, run unpinned unless asked."""
    parser = _subcommands(_parser())["serve"]
    usable = sorted(os.sched_getaffinity(0))

    def cpus(*argv: str) -> list[int] | None:
        args = parser.parse_args(list(argv))
        return worker_cpus(args)

    assert cpus("--workers", "1") is None
    assert cpus("--workers", str(len(usable) + 1)) is None
    assert cpus("--workers", "2", "--no-pin-workers") is None
    # asked for: every worker is pinned, wrapping around the CPUs
    assert cpus("--workers", "1", "--pin-workers") == usable[:1]
    wrapped = cpus("--workers", str(len(usable) + 1), "--pin-workers")
    assert wrapped == [*usable, usable[0]]
    if len(usable) >= 2:
        assert cpus("--workers", "2") == usable[:2]
        assert cpus("--workers", str(len(usable))) == usable


def test_a_worker_whose_cpu_is_gone_runs_unpinned(caplog: pytest.LogCaptureFixture) -> None:
    """A CPU that cannot be had (taken away since it was listed) leaves the worker unpinned,
    with a warning, instead of stopping it."""
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.WARNING, logger="anytus.serve"):
        pin_to_cpu(1 << 20)
    assert os.sched_getaffinity(0) == before
    assert "cannot run on CPU 1048576 alone" in caplog.text
    assert "runs unpinned" in caplog.text


def test_workers_must_be_a_number_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _parser().parse_args(["serve", "--workers", "many"])
    assert "not a number of processes, nor auto: 'many'" in capsys.readouterr().err


def test_a_worker_with_more_connections_than_another_lets_it_accept_first() -> None:
    counts = [-1, -1, -1]  # as the supervisor starts: no worker accepts yet
    first, second = WorkerLoads(counts, 0), WorkerLoads(counts, 1)
    first.connections(2)
    assert first.lead() == 0  # nobody else accepts
    second.connections(1)
    assert first.lead() == 1
    assert second.lead() == 0
    second.connections(0)
    assert first.lead() == 2  # it waits longer, the further ahead it is
    second.connections(2)
    assert first.lead() == 0  # a tie: both accept
    second.connections(-1)  # shutting down (or dead): no longer counts
    assert first.lead() == 0
    assert counts == [2, -1, -1]
