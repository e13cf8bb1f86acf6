"""What travels to the Ray workers (precompute/shipping.py): the package, the model, small local tables.

The cluster tests (tests/cluster/) prove the whole path on nodes that cannot see the driver's files; these
check the parts on the shared local Ray: a model of hundreds of MB, unpacked once per node however many
actors ask at once, a model that changed under a run, and the checks made before anything is created.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import precompute
from precompute import cluster, shipping
from precompute.adapters import open_backend
from precompute.config import ConfigError, load_config
from precompute.model import ModelError, fetch, fingerprint
from precompute.run import _check_table, run
from precompute.shipping import ModelSource
from precompute.space import TableSpace
from precompute.store import Versions
from tests.precompute.conftest import EXAMPLE, EXAMPLE_CONFIG, ROOT, example
from tests.servers.s3 import S3Server


def fake_model(path: Path, megabytes: int) -> Path:
    """A folder shaped like a SavedModel (what the transport sees): saved_model.pb and a variables file."""
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph")
    rng = np.random.default_rng(1)
    (path / "variables" / "variables.data-00000-of-00001").write_bytes(rng.bytes(megabytes * 1024 * 1024))
    (path / "variables" / "variables.index").write_bytes(b"index")
    return path


def test_the_package_travels_whole_with_its_linked_folders() -> None:
    folder = shipping.package_dir()
    assert folder.name == "precompute"
    shipped = {p.relative_to(folder) for p in folder.rglob("*.py")}
    for linked in ("store", "api", "adapters"):
        sources = {Path(linked) / p.relative_to(ROOT / linked) for p in (ROOT / linked).rglob("*.py")}
        assert sources, linked
        assert sources <= shipped, linked
    assert Path("run.py") in shipped
    assert not any("__pycache__" in p.parts for p in folder.rglob("*"))
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    assert shipping.package_dir() == folder  # named by content: the same code is the same folder (and upload)


def test_the_package_never_includes_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "secrets.env").write_text("TOKEN=x")
    monkeypatch.chdir(tmp_path)
    folder = shipping.package_dir()
    assert not (folder / "secrets.env").exists()
    assert Path(precompute.__file__).resolve().parent != folder


@pytest.mark.ray
def test_a_large_model_is_unpacked_once_per_node_however_many_actors_ask(ray_session: Any, tmp_path: Path) -> None:
    model = fake_model(tmp_path / "model", megabytes=300)
    model_id = fingerprint(model)
    source = shipping.ship_model(model, model_id, uri=None)
    cache = tmp_path / "cache"

    @ray_session.remote(num_cpus=0)
    class Actor:
        def unpack(self, source: ModelSource) -> tuple[str, bool, str]:
            path, unpacked = source.materialize()
            return str(path), unpacked, fingerprint(path)

    env = {"env_vars": {"PRECOMPUTE_CACHE_DIR": str(cache)}}
    actors = [Actor.options(runtime_env=env).remote() for _ in range(4)]  # type: ignore[attr-defined]
    results = ray_session.get([actor.unpack.remote(source) for actor in actors], timeout=240)

    assert sum(unpacked for _, unpacked, _ in results) == 1
    assert {path for path, _, _ in results} == {str(cache / "models" / model_id.removeprefix("sha256:"))}
    assert {found for _, _, found in results} == {model_id}
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]  # no staging left behind


def test_a_model_that_changed_under_the_run_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRECOMPUTE_CACHE_DIR", str(tmp_path / "cache"))
    model = fake_model(tmp_path / "model", megabytes=1)
    checked = fingerprint(model)
    (model / "variables" / "variables.index").write_bytes(b"retrained")
    source = ModelSource(checked, uri=model.as_uri())
    with pytest.raises(ModelError, match="changed during the run"):
        source.materialize()
    assert not (tmp_path / "cache" / "models" / checked.removeprefix("sha256:")).exists()
    fresh = ModelSource(fingerprint(model), uri=model.as_uri())
    assert fingerprint(fresh.local_path()) == fingerprint(model)


def test_a_model_uri_is_fetched_and_bad_ones_are_clear(tmp_path: Path) -> None:
    copy = fetch((EXAMPLE / "model").as_uri(), tmp_path / "copy")
    assert fingerprint(copy) == fingerprint(EXAMPLE / "model")
    with pytest.raises(ModelError, match=r"\[model\] path: no model at file:///nowhere/model"):
        fetch("file:///nowhere/model", tmp_path / "x")
    with pytest.raises(ModelError, match="is not a folder"):
        fetch((EXAMPLE / "model" / "saved_model.pb").as_uri(), tmp_path / "y")
    with pytest.raises(ModelError, match="cannot read the model at nosuch://"):
        fetch("nosuch://bucket/model", tmp_path / "z")


def test_a_model_uri_in_the_config_is_kept_as_written(tmp_path: Path) -> None:
    text = EXAMPLE_CONFIG.read_text().replace('path = "model"', 'path = "gs://bucket/models/babyweight/3"')
    (tmp_path / "precompute.toml").write_text(text)
    config = load_config(tmp_path / "precompute.toml", env={"PRECOMPUTE_CACHE_DIR": str(tmp_path)})
    assert config.model.uri == "gs://bucket/models/babyweight/3"
    assert config.model.location == "gs://bucket/models/babyweight/3"
    secret = "s3://b/m?region=us-east-1&access_key=AKIA&secret_key=s3cr3t"
    (tmp_path / "precompute.toml").write_text(text.replace("gs://bucket/models/babyweight/3", secret))
    config = load_config(tmp_path / "precompute.toml", env={"PRECOMPUTE_CACHE_DIR": str(tmp_path)})
    assert config.model.uri == secret  # what is read
    assert config.model.location == "s3://b/m?region=us-east-1&access_key=***&secret_key=***"  # what is shown


def test_ray_client_addresses_are_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match=r"\[run\] ray_address .*Ray Client.*ray job submit"):
        cluster.resolve("ray://head:10001")
    assert cluster.resolve(None) == "local"
    assert cluster.resolve("10.0.0.5:6379") == "10.0.0.5:6379"


def test_a_large_local_table_is_refused_for_a_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    table = tmp_path / "users.parquet"
    table.write_bytes(os.urandom(4096))
    space = TableSpace((str(table), "s3://bucket/more.parquet"), "parquet", "user_id", {})
    local = example("redis://127.0.0.1:1/0")
    on_cluster = dataclasses.replace(local, run=dataclasses.replace(local.run, ray_address="10.0.0.5:6379"))
    monkeypatch.setattr(shipping, "SHIP_TABLE_BYTES", 1024)
    _check_table(local, space)  # a local Ray reads local files
    with pytest.raises(ConfigError, match=r"\[space\] path: .*users.parquet.*\(s3://, gs://"):
        _check_table(on_cluster, space)
    monkeypatch.setattr(shipping, "SHIP_TABLE_BYTES", 8192)
    _check_table(on_cluster, space)  # small enough to send through Ray


def test_pack_model_is_a_plain_tar_of_the_folder(tmp_path: Path) -> None:
    import io
    import tarfile

    data = shipping.pack_model(EXAMPLE / "model")
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        names = set(archive.getnames())
    expected = {str(p.relative_to(EXAMPLE / "model")) for p in (EXAMPLE / "model").rglob("*") if p.is_file()}
    assert names == expected
    assert hashlib.sha256(data).hexdigest() == hashlib.sha256(shipping.pack_model(EXAMPLE / "model")).hexdigest()


@pytest.mark.ray
@pytest.mark.server
def test_a_run_reads_an_s3_model_where_it_scores(ray_session: Any, s3_server: S3Server, tmp_path: Path) -> None:
    s3_server.upload("models", "babyweight/3", EXAMPLE / "model")
    uri = s3_server.uri("models", "babyweight/3")
    text = EXAMPLE_CONFIG.read_text().replace('path = "model"', f'path = "{uri}"')
    (tmp_path / "precompute.toml").write_text(text)
    config = load_config(tmp_path / "precompute.toml", env={"PRECOMPUTE_STORE": f"sqlite:///{tmp_path / 's.db'}"})
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, actors=1, cpus_per_actor=0.5))

    summary = run(config)

    assert summary.rows == 21_762
    assert summary.model == fingerprint(EXAMPLE / "model")
    record = Versions(open_backend(config.store.url)).get(summary.version)
    assert record.meta["model_path"] == uri
    with pytest.raises(ModelError, match="no model at s3://models/nothing"):
        fetch(s3_server.uri("models", "nothing"), tmp_path / "none")
