"""`make bench-quick` in-process: the benchmark runs end to end and its correctness check passes."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pgmeta_bench.catalog import CatalogShape, catalog_batches
from pgmeta_bench.cli import main
from pgmeta_bench.report import update_doc
from pgmeta_devstack.layout import dapr_bin_dir


@pytest.mark.e2e
def test_quick_benchmark_produces_a_table_and_passes_the_correctness_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = [b for b in ("daprd", "placement", "scheduler") if not (dapr_bin_dir() / b).exists()]
    if missing:
        pytest.fail(f"Dapr runtime missing in {dapr_bin_dir()} ({', '.join(missing)}): run `make dapr` first")
    os.chmod(tmp_path, 0o755)  # the bench PostgreSQL runs as an unprivileged user under this directory
    output = tmp_path / "benchmarks.md"

    code = main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--output", str(output), "--base-port", "28400"])

    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    assert "| measure | median | each repetition | target |" in printed
    assert re.search(r"\| pgmeta end to end .*\| \d+\.\d+ s \|", printed), printed[-3000:]
    assert "| correctness: pgmeta counts = pg_catalog counts | passed | tables 20, views 2, columns 116 |" in printed
    assert "<!-- bench:2x10x5 -->" in output.read_text()


def test_catalog_batches_create_what_the_shape_promises() -> None:
    shape = CatalogShape(schemas=3, tables=25, columns=6)
    ddl = "".join(catalog_batches(shape))
    assert ddl.count("CREATE SCHEMA ") == 3
    assert ddl.count("CREATE TABLE ") == shape.expected_counts()["Table"] == 75
    assert ddl.count("CREATE VIEW ") == shape.expected_counts()["View"] == 6
    assert ddl.count("PRIMARY KEY") == 75
    assert ddl.count("REFERENCES ") == 3 * 12
    assert ddl.count("COMMENT ON TABLE ") == 75 and ddl.count("COMMENT ON SCHEMA ") == 3


def test_update_doc_replaces_only_the_section_of_the_same_size(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_doc(doc, "2x10x5", "## small\nsmall-result-1")
    update_doc(doc, "50x200x20", "## default\ndefault-result")
    update_doc(doc, "2x10x5", "## small\nsmall-result-2")
    text = doc.read_text()
    assert text.startswith("# Benchmarks")
    assert "small-result-1" not in text
    assert text.count("small-result-2") == 1 and text.count("default-result") == 1
    assert text.index("small-result-2") < text.index("default-result")


def test_update_doc_keeps_the_hand_written_notes_between_header_and_results(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    update_doc(doc, "2x10x5", "## small\nresult-1")
    doc.write_text(
        doc.read_text().replace("<!-- bench:2x10x5 -->", "## Where the time goes\n\nnotes\n\n<!-- bench:2x10x5 -->")
    )
    update_doc(doc, "2x10x5", "## small\nresult-2")
    text = doc.read_text()
    assert text.count("## Where the time goes\n\nnotes\n") == 1 and "result-2" in text and "result-1" not in text
    assert text.index("notes") < text.index("result-2")
