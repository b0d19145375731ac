"""The transformer's memory and CPU on real extract chunks, without a stack: a cheap, repeatable measurement.

``pgmeta-chunk-memory save DIR`` reads the cached bench catalog as the extractor does (its queries, its
batching) and saves every extract chunk, compressed as the claim-check stores it. ``pgmeta-chunk-memory measure
DIR`` then transforms those chunks in this (fresh) process through the transformer's own ``transform_chunk``,
delivered from ``--threads`` worker threads as the service's web server delivers them, writes encoded and
dropped, and prints VmHWM / VmRSS after imports, every 10 chunks and at the end, and the chunks' CPU seconds.
``--save-output OUT`` keeps what every chunk rendered; ``--check-against OUT`` fails unless a later run (after
a change to the renderer) renders exactly the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pgmeta_bench.common import BENCH_DATABASE, DEFAULT_BASE_PORT

CONNECTION_QN = "default/postgres/0"


def memory_mb() -> str:
    """``VmHWM`` (the peak RSS the bench reports) and ``VmRSS`` of this process, in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    hwm, rss = (int(fields[name].split()[0]) // 1024 for name in ("VmHWM", "VmRSS"))
    return f"peak RSS {hwm} MB, RSS {rss} MB"


def save(directory: Path, schemas: int, tables: int, columns: int, cache_dir: Path, base_port: int) -> None:
    from pgmeta_bench.catalog import CatalogShape, bench_postgres
    from pgmeta_extractor.extraction import iter_catalog
    from pgmeta_extractor.source import connect
    from pgmeta_shared.claimcheck import batch_records, encode_chunk
    from pgmeta_shared.events import DatabaseSelection, FilterSpec, SourceSpec

    directory.mkdir(parents=True, exist_ok=True)
    report: list[dict[str, str]] = []
    chunks = 0
    with bench_postgres(CatalogShape(schemas, tables, columns), cache_dir, base_port + 1000) as server:
        source = SourceSpec(
            host="127.0.0.1", port=server.port, username="postgres", database=BENCH_DATABASE, sslmode="disable"
        )
        selection = DatabaseSelection(database=BENCH_DATABASE, unit="bench")
        with connect(source, lambda: server.password, BENCH_DATABASE) as connection:
            for chunks, batch in enumerate(batch_records(iter_catalog(connection, selection, FilterSpec(), report)), 1):
                (directory / f"{chunks - 1:05d}.zst").write_bytes(encode_chunk(batch))
    if report:
        raise SystemExit(f"reading the catalog met problems: {report}")
    sys.stdout.write(f"{chunks} extract chunks saved in {directory}\n")


class OutputCheck:
    """What each chunk rendered, uncompressed: saved once (``--save-output``), then compared after a change to the
    renderer (``--check-against``): output must stay byte-identical."""

    def __init__(self, directory: Path, *, saving: bool) -> None:
        self.directory, self.saving = directory, saving
        self.differing: list[str] = []
        self.seen: set[str] = set()
        if saving:
            directory.mkdir(parents=True, exist_ok=True)

    def __call__(self, name: str, data: bytes) -> None:
        path = self.directory / name
        self.seen.add(name)
        if self.saving:
            path.write_bytes(data)
        elif not path.exists() or path.read_bytes() != data:
            self.differing.append(name)


class SavedChunks:
    """The transformer's platform: extract chunks read from files; what it writes is encoded, then dropped
    (and saved or compared, uncompressed, when an output check is given)."""

    def __init__(self, files: list[Path], check: OutputCheck | None = None) -> None:
        import orjson

        from pgmeta_shared.claimcheck import decode_chunk, encode_chunk, encode_parts

        self._files = files
        self._decode, self._encode_chunk, self._encode_parts = decode_chunk, encode_chunk, encode_parts
        self._dumps = orjson.dumps
        self._check = check
        self.written = 0

    def load_chunk(self, run_id: str, stage: str, unit: str, index: int) -> list[Any]:
        return self._decode(self._files[index].read_bytes())

    def save_chunk(self, run_id: str, stage: str, unit: str, index: int, records: list[Any]) -> None:
        self.written += len(self._encode_chunk(records))
        if self._check is not None:
            self._check(f"{index:05d}.{stage}.json", self._dumps(records))

    def save_parts(self, run_id: str, stage: str, unit: str, index: int, parts: dict[str, bytes]) -> None:
        self.written += len(self._encode_parts(parts))
        if self._check is not None:
            header = self._dumps([[name, len(blob)] for name, blob in parts.items()])
            self._check(f"{index:05d}.{stage}.parts", header + b"\n" + b"".join(parts.values()))

    def get_json(self, key: str) -> Any | None:
        return None  # no chunk is done yet

    def save_json(self, key: str, value: Any, *, ttl_seconds: int | None = None) -> None:
        pass

    def publish(self, topic: Any, event: Any) -> None:
        pass


def measure(directory: Path, threads: int, check: OutputCheck | None = None) -> None:
    out = sys.stdout
    out.write(f"start: {memory_mb()}\n")
    # What the service imports: its app (FastAPI, Dapr, telemetry), built as it builds it.
    from pgmeta_shared.settings import DaprSettings
    from pgmeta_transformer.app import create_app
    from pgmeta_transformer.transformation import transform_chunk

    create_app(DaprSettings())
    out.write(f"after imports: {memory_mb()}\n")
    files = sorted(directory.glob("*.zst"))
    if not files:
        raise SystemExit(f"no extract chunks in {directory}: run `pgmeta-chunk-memory save {directory}` first")
    platform: Any = SavedChunks(files, check)

    def one(index: int) -> int:
        transform_chunk(platform, "run", CONNECTION_QN, "bench", 1, index)
        return index

    started = time.process_time()
    with ThreadPoolExecutor(max_workers=threads) as deliveries:
        for index in deliveries.map(one, range(len(files))):
            if index % 10 == 9:
                out.write(f"{index + 1} chunks: {memory_mb()}\n")
    cpu = time.process_time() - started
    out.write(f"{len(files)} chunks on {threads} thread(s), CPU {cpu:.2f} s, {platform.written} bytes written: ")
    out.write(f"{memory_mb()}\n")
    if check is not None and check.saving:
        out.write(f"output of every chunk saved in {check.directory}\n")
    elif check is not None:
        missing = sorted({path.name for path in check.directory.iterdir()} - check.seen)
        if check.differing or missing:
            raise SystemExit(
                f"output differs from {check.directory}: {', '.join(check.differing) or 'none'} differ, "
                f"{', '.join(missing) or 'none'} missing"
            )
        out.write(f"output byte-identical to {check.directory}\n")


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pgmeta-chunk-memory", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save", help="save the cached bench catalog's extract chunks in DIR")
    saving.add_argument("directory", type=Path)
    saving.add_argument("--schemas", type=int, default=50)
    saving.add_argument("--tables", type=int, default=200, help="tables per schema")
    saving.add_argument("--columns", type=int, default=20, help="columns per table")
    saving.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "pgmeta" / "bench")
    saving.add_argument("--base-port", type=int, default=DEFAULT_BASE_PORT)
    measuring = commands.add_parser("measure", help="transform the chunks saved in DIR, printing peak RSS")
    measuring.add_argument("directory", type=Path)
    measuring.add_argument("--threads", type=int, default=40, help="delivering threads (the web server's: 40)")
    checking = measuring.add_mutually_exclusive_group()
    checking.add_argument("--save-output", type=Path, metavar="OUT", help="save every chunk's output in OUT")
    checking.add_argument(
        "--check-against", type=Path, metavar="OUT", help="fail unless every chunk's output equals OUT's"
    )
    args = parser.parse_args(argv)
    if args.command == "save":
        cache_dir = args.cache_dir.expanduser().resolve()
        save(args.directory, args.schemas, args.tables, args.columns, cache_dir, args.base_port)
    else:
        check = None
        if args.save_output is not None:
            check = OutputCheck(args.save_output, saving=True)
        elif args.check_against is not None:
            check = OutputCheck(args.check_against, saving=False)
        measure(args.directory, args.threads, check)
