"""`lib.evaluation.champion`'s champion folders on hand-made model folders (files of known bytes, no
trained model): the copy of the meta-controller and of every expert it names, the rewritten
`spec.json`, read-only files, nothing left behind by a failed copy, and a promotion's row naming the
copy. The reports tests (`tests/pipeline/reports/`) load real models from such a copy."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import polars as pl
import pytest

from carry_pipeline.lib.evaluation import champion
from carry_pipeline.lib.evaluation.champion import (
    champion_folder,
    champion_history,
    champion_row,
    install_champion,
    promote_champion,
)
from carry_pipeline.lib.evaluation.metrics import METRIC_COLUMNS
from carry_pipeline.lib.evaluation.promotion import PromotionRule, decide
from carry_pipeline.lib.evaluation.walk_forward import METRICS_SCHEMA

EXPERTS = ("short_term", "long_term")


def _folder(path: Path, tag: str) -> Path:
    # A saved model's files; `tag` makes every folder's bytes its own.
    path.mkdir(parents=True)
    (path / "model.zip").write_bytes(f"weights of {tag}".encode())
    (path / "spec.json").write_text(json.dumps({"name": tag}))
    (path / "env_config.json").write_text("{}")
    return path


def _training_store(root: Path, anomaly: bool = True) -> Path:
    # `<root>/<expert>/fold1/` and `<root>/meta/fold1/`, whose spec.json names the experts.
    experts = {n: str(_folder(root / n / "fold1", n)) for n in EXPERTS}
    meta = _folder(root / "meta" / "fold1", "meta")
    guard = str(_folder(root / "anomaly" / "fold1", "anomaly")) if anomaly else None
    spec = {"name": "meta", "gating": "softmax", "experts": experts, "anomaly": guard}
    (meta / "spec.json").write_text(json.dumps(spec))
    return meta


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_install_copies_the_meta_and_its_experts_and_points_the_copy_at_them(
    tmp_path: Path,
) -> None:
    meta = _training_store(tmp_path / "models")
    copy = install_champion(meta, tmp_path / "models", "run-1:meta_controller")
    home = tmp_path / "models" / "champions" / "run-1_meta_controller"
    assert copy == home.resolve() / "meta"
    assert (copy / "model.zip").read_bytes() == b"weights of meta"
    for name in EXPERTS:
        assert (home / "experts" / name / "model.zip").read_bytes() == f"weights of {name}".encode()
    assert (home / "anomaly" / "model.zip").read_bytes() == b"weights of anomaly"
    spec = json.loads((copy / "spec.json").read_text())
    assert spec["experts"] == {n: str(home.resolve() / "experts" / n) for n in EXPERTS}
    assert spec["anomaly"] == str(home.resolve() / "anomaly") and spec["gating"] == "softmax"
    source = json.loads((home / "source.json").read_text())
    assert source["meta"] == str(meta) and source["experts"]["long_term"] == str(
        tmp_path / "models" / "long_term" / "fold1"
    )
    # Read-only files; no staging folder left beside the champion.
    assert all((home / f).stat().st_mode & 0o222 == 0 for f in _files(home))
    assert [p.name for p in (tmp_path / "models" / "champions").iterdir()] == [home.name]

    # Retraining overwrites the training folders; the copy does not change.
    before = _files(home)
    (meta / "model.zip").write_bytes(b"another model")
    (tmp_path / "models" / "short_term" / "fold1" / "model.zip").write_bytes(b"another expert")
    assert _files(home) == before


def test_a_meta_without_anomaly_expert_copies_no_anomaly_folder(tmp_path: Path) -> None:
    meta = _training_store(tmp_path / "models", anomaly=False)
    copy = install_champion(meta, tmp_path / "models", "r:m")
    assert json.loads((copy / "spec.json").read_text())["anomaly"] is None
    assert not (copy.parent / "anomaly").exists()


def test_a_missing_expert_fails_naming_it_and_leaves_no_folder(tmp_path: Path) -> None:
    meta = _training_store(tmp_path / "models")
    gone = tmp_path / "models" / "long_term" / "fold1"
    for f in gone.iterdir():
        f.unlink()
    gone.rmdir()
    with pytest.raises(FileNotFoundError, match=f"expert 'long_term' folder {gone} is gone"):
        install_champion(meta, tmp_path / "models", "r:m")
    assert not (tmp_path / "models" / "champions").exists() or not any(
        (tmp_path / "models" / "champions").iterdir()
    )


def test_a_copy_that_fails_midway_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The disk fills up while the anomaly expert is copied, after the meta and the experts were:
    # neither the champion folder nor its staging folder remains.
    meta = _training_store(tmp_path / "models")
    copytree = shutil.copytree

    def full_disk(src: Path, dst: Path, **kwargs: object) -> object:
        if Path(dst).name == "anomaly":
            raise OSError(28, "No space left on device")
        return copytree(src, dst, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(champion.shutil, "copytree", full_disk)
    with pytest.raises(OSError, match="No space left"):
        install_champion(meta, tmp_path / "models", "r:m")
    assert list((tmp_path / "models" / "champions").iterdir()) == []


def test_an_existing_champion_folder_is_never_replaced(tmp_path: Path) -> None:
    meta = _training_store(tmp_path / "models")
    install_champion(meta, tmp_path / "models", "r:m")
    with pytest.raises(FileExistsError, match="never replaced"):
        install_champion(meta, tmp_path / "models", "r:m")


@pytest.mark.parametrize("bad", ["", "..", "."])
def test_a_champion_id_without_a_folder_name_is_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="no usable folder name"):
        champion_folder(tmp_path, bad)


def _row(run_id: str, meta: Path) -> pl.DataFrame:
    rows = [{**dict.fromkeys(METRIC_COLUMNS, 0.0), "fold": 1, "aggregate": "fold", "policy": p,
             "sharpe": s, "funding": 100.0, "fees": 10.0}
            for p, s in (("meta_controller", 2.0), ("long_carry", 1.0))]  # fmt: skip
    metrics = pl.DataFrame(rows, schema=METRICS_SCHEMA)
    model = {"fold": 1, "model_path": str(meta), "data_sha256": "abc",
             "trained_at": datetime(2024, 1, 1, tzinfo=UTC)}  # fmt: skip
    rule = PromotionRule()
    return champion_row(run_id=run_id, model=model, fold_metrics=metrics.head(1),
                        decision=decide(metrics, rule), rule=rule)  # fmt: skip


def test_promote_records_the_copy_and_a_second_champion_gets_its_own_folder(
    tmp_path: Path,
) -> None:
    root = tmp_path / "models"
    meta = _training_store(root)
    con = duckdb.connect(str(tmp_path / "carry.duckdb"))
    a, _ = promote_champion(con, _row("run-a", meta), root)
    a_home = Path(a["model_path"][0]).parent
    a_files = _files(a_home)
    (meta / "model.zip").write_bytes(b"weights of the next meta")
    b, total = promote_champion(con, _row("run-b", meta), root)
    assert total == 2
    history = champion_history(con)
    assert history["model_path"].to_list() == [a["model_path"][0], b["model_path"][0]]
    assert Path(b["model_path"][0]) == champion_folder(root, "run-b:meta_controller").resolve() / (
        "meta"
    )
    assert (Path(b["model_path"][0]) / "model.zip").read_bytes() == b"weights of the next meta"
    assert _files(a_home) == a_files and (a_home / "meta" / "model.zip").read_bytes() == (
        b"weights of meta"
    )
    # The same champion again: refused before anything is copied; A's and B's folders stay.
    with pytest.raises(ValueError, match="already holds champion 'run-a:meta_controller'"):
        promote_champion(con, _row("run-a", meta), root)
    assert _files(a_home) == a_files and champion_history(con).height == 2


def test_promote_replaces_an_orphan_folder_and_removes_its_copy_when_the_insert_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "models"
    meta = _training_store(root)
    # A crash between the copy and the insert left a folder that no row names.
    orphan = install_champion(meta, root, "run-a:meta_controller").parent
    (meta / "model.zip").write_bytes(b"retried weights")
    con = duckdb.connect(str(tmp_path / "carry.duckdb"))
    a, _ = promote_champion(con, _row("run-a", meta), root)
    assert (Path(a["model_path"][0]) / "model.zip").read_bytes() == b"retried weights"

    # The insert fails (the database is gone, say): no folder is left without its row.
    def fail(*_: object) -> int:
        raise duckdb.IOException("disk full")

    monkeypatch.setattr(champion, "append_champion", fail)
    with pytest.raises(duckdb.IOException, match="disk full"):
        promote_champion(con, _row("run-b", meta), root)
    assert [p.name for p in (root / "champions").iterdir()] == [orphan.name]
    assert champion_history(con)["champion_id"].to_list() == ["run-a:meta_controller"]
