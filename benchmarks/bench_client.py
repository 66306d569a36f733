"""Upload clients side by side: ``anytus.client.TusClient`` against curl, tuspy and tus-js-client.

Each client uploads the same file (``--size``, 1 GiB; ``--quick``: 128 MiB) to the same
``anytus serve --durability none`` (asyncio, a subprocess) over loopback, in its own
subprocess, in interleaved rounds (``--rounds``, 3; the order rotates every round). For each:
throughput (MiB/s, from the client's own timing of the upload, process start-up left out), client
CPU seconds per GiB while uploading (measured by each client process around its upload; curl's is its
whole process) and for the whole process (``wait4``'s rusage: start-up and imports included), peak
client RSS (rusage), the medians over the rounds, and the ratios.

- ``anytus``: ``TusClient.upload(path)``, defaults (one PATCH for the whole file), on asyncio
  (``--anytus-backend trio`` for trio);
- ``curl``: ``curl --upload-file`` as one PATCH after a POST made by this script: one stream with
  no tus logic, the limit for one connection;
- ``tuspy``: ``tusclient`` 1.x, ``chunk_size`` 64 MiB (tuspy reads each chunk into memory);
- ``tus-js-client``: its Node build (``tests/js``), from an ``fs.ReadStream`` with 64 MiB chunks.

Goals (issue 8): anytus >= 0.9x curl's throughput, less CPU per GiB than tuspy, memory flat in the
file's size (compare the RSS of a ``--quick`` run with a full one).

Run: ``.venv/bin/python benchmarks/bench_client.py [--quick] [--size 1G] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from _common import GIB, MIB, human, parse_size

if TYPE_CHECKING:
    from collections.abc import Iterator

REPO = Path(__file__).resolve().parent.parent
JS_DIR = REPO / "tests" / "js"
SERVING_LINE = re.compile(r"anytus: serving .* on (http://\S+)")
CLIENTS = ("anytus", "curl", "tuspy", "tus-js-client")
TUS = {"Tus-Resumable": "1.0.0"}
OTHER_CHUNK = 64 * MIB

JS_UPLOAD = r"""
const fs = require('node:fs')
const tus = require('tus-js-client')
const [endpoint, file, chunkSize] = process.argv.slice(1)
const size = fs.statSync(file).size
const started = process.hrtime.bigint()
const cpuStarted = process.cpuUsage()
const upload = new tus.Upload(fs.createReadStream(file, { highWaterMark: 1 << 20 }), {
  endpoint,
  uploadSize: size,
  chunkSize: Number(chunkSize),
  retryDelays: null,
  onError: (error) => { console.error(String(error)); process.exit(1) },
  onSuccess: () => {
    const seconds = Number(process.hrtime.bigint() - started) / 1e9
    const usage = process.cpuUsage(cpuStarted)
    const cpu = (usage.user + usage.system) / 1e6
    process.stdout.write(JSON.stringify({ seconds, cpu, url: upload.url }) + '\n')
  },
})
upload.start()
"""


# -- the children ----------------------------------------------------------------------------------


def child_anytus(endpoint: str, file: str, backend: str) -> None:
    import anyio

    from anytus.client import TusClient

    async def run() -> dict[str, object]:
        async with TusClient(endpoint, store=False) as client:
            started, cpu = time.perf_counter(), cpu_seconds()
            url = await client.upload(file)
            return {
                "seconds": time.perf_counter() - started,
                "cpu": cpu_seconds() - cpu,
                "url": url,
            }

    print(json.dumps(anyio.run(run, backend=backend)))


def child_tuspy(endpoint: str, file: str) -> None:
    from tusclient import client as tus_client

    with open(file, "rb") as stream:
        started, cpu = time.perf_counter(), cpu_seconds()
        uploader = tus_client.TusClient(endpoint).uploader(
            file_stream=stream, chunk_size=OTHER_CHUNK
        )
        uploader.upload()
        seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    print(json.dumps({"seconds": seconds, "cpu": cpu, "url": uploader.url}))


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# -- the parent ------------------------------------------------------------------------------------


def serve(directory: Path) -> tuple[subprocess.Popen[bytes], str]:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "anytus", "serve", "--port", "0", "--dir", str(directory)),
            *("--durability", "none"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    assert process.stderr is not None
    for raw in iter(process.stderr.readline, b""):
        match = SERVING_LINE.search(raw.decode())
        if match:
            return process, match.group(1)
    raise SystemExit("anytus serve did not start")


def request(method: str, url: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    """One request; the response headers with lower-cased names."""
    req = urllib.request.Request(url, method=method, headers={**TUS, **headers})
    with urllib.request.urlopen(req, timeout=30) as response:
        return response.status, {k.lower(): v for k, v in response.headers.items()}


def command_for(client: str, endpoint: str, file: Path, args: argparse.Namespace) -> list[str]:
    me = str(Path(__file__).resolve())
    if client == "anytus":
        return [sys.executable, me, "--child", "anytus", endpoint, str(file), args.anytus_backend]
    if client == "tuspy":
        return [sys.executable, me, "--child", "tuspy", endpoint, str(file), "-"]
    if client == "tus-js-client":
        return ["node", "-e", JS_UPLOAD, endpoint, str(file), str(OTHER_CHUNK)]
    raise AssertionError(client)


def run_one(client: str, endpoint: str, file: Path, args: argparse.Namespace) -> dict[str, float]:
    size = file.stat().st_size
    if client == "curl":
        _, headers = request("POST", endpoint, {"Upload-Length": str(size)})
        url = headers["location"]
        command = [
            *("curl", "-sS", "-o", "/dev/null", "-X", "PATCH", "-w", "%{time_total}"),
            *("-H", "Tus-Resumable: 1.0.0", "-H", "Upload-Offset: 0", "-H", "Expect:"),
            *("-H", "Content-Type: application/offset+octet-stream"),
            *("--upload-file", str(file), url),
        ]
    else:
        command = command_for(client, endpoint, file, args)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, cwd=JS_DIR, env=child_env())
    assert process.stdout is not None
    output = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{client} failed ({process.returncode}): {output}")
    process_cpu = usage.ru_utime + usage.ru_stime
    if client == "curl":
        seconds, upload_cpu = float(output), process_cpu
    else:
        result = json.loads(output.strip().splitlines()[-1])
        seconds, upload_cpu, url = float(result["seconds"]), float(result["cpu"]), result["url"]
    offset = int(request("HEAD", url, {})[1]["upload-offset"])
    if offset != size:
        raise SystemExit(f"{client}: the server has {offset} of {size} bytes")
    request("DELETE", url, {})  # keep the disk free for the next one
    return {
        "mibps": size / MIB / seconds,
        "cpu_per_gib": upload_cpu / (size / GIB),
        "process_cpu_per_gib": process_cpu / (size / GIB),
        "rss_mib": usage.ru_maxrss / 1024,
    }


def line(m: dict[str, float]) -> str:
    return (
        f"{m['mibps']:8.1f} MiB/s  {m['cpu_per_gib']:6.2f} CPU s/GiB uploading "
        f"({m['process_cpu_per_gib']:5.2f} whole process)  {m['rss_mib']:7.1f} MiB peak RSS"
    )


def child_env() -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src)


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MIB)
    with path.open("wb") as f:
        written = 0
        while written < size:
            piece = block[: size - written]
            f.write(piece)
            written += len(piece)


def rotations(names: tuple[str, ...], rounds: int) -> Iterator[list[str]]:
    for index in range(rounds):
        shift = index % len(names)
        yield list(names[shift:] + names[:shift])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=GIB)
    parser.add_argument("--quick", action="store_true", help="128 MiB, 2 rounds")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--anytus-backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--child", nargs=4, metavar=("CLIENT", "ENDPOINT", "FILE", "EXTRA"))
    args = parser.parse_args()
    if args.child:
        kind, endpoint, file, extra = args.child
        if kind == "anytus":
            child_anytus(endpoint, file, extra)
        else:
            child_tuspy(endpoint, file)
        return
    if args.quick:
        args.size, args.rounds = 128 * MIB, 2
    clients = tuple(c for c in args.clients.split(",") if c)
    if "tus-js-client" in clients and not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "-s"], cwd=JS_DIR, check=True)

    results: dict[str, list[dict[str, float]]] = {client: [] for client in clients}
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        file = Path(tmp) / "payload.bin"
        make_file(file, args.size)
        server, endpoint = serve(Path(tmp) / "uploads")
        try:
            print(
                f"{human(args.size)} to anytus serve (asyncio, --durability none), "
                f"{args.rounds} rounds; anytus on {args.anytus_backend}"
            )
            for order in rotations(clients, args.rounds):
                for client in order:
                    result = run_one(client, endpoint, file, args)
                    results[client].append(result)
                    print(f"  {client:14} {line(result)}", flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
    print("\nmedians:")
    medians = {
        client: {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        for client, runs in results.items()
    }
    for client, m in medians.items():
        print(f"  {client:14} {line(m)}")
    if "anytus" in medians:
        ours = medians["anytus"]
        for other in ("curl", "tuspy", "tus-js-client"):
            if other in medians:
                theirs = medians[other]
                print(
                    f"  anytus / {other:14} throughput {ours['mibps'] / theirs['mibps']:.2f}x, "
                    f"CPU per GiB {ours['cpu_per_gib'] / theirs['cpu_per_gib']:.2f}x "
                    f"(whole process "
                    f"{ours['process_cpu_per_gib'] / theirs['process_cpu_per_gib']:.2f}x), "
                    f"peak RSS {ours['rss_mib'] / theirs['rss_mib']:.2f}x"
                )


if __name__ == "__main__":
    main()
