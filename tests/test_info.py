"""`simx info` on a model and on a cache: the figures come from the files themselves."""

from __future__ import annotations

import json

from click.testing import CliRunner

from simx.cli.app import main
from simx.run.encoder import Encoder
from simx.embed.pipeline import embed_into_cache
from simx.run.session import read_spec


def test_info_model(exported):
    p = exported["dinov2-small"]
    r = CliRunner().invoke(main, ["info", str(p)])
    assert r.exit_code == 0, r.output
    spec = read_spec(p)
    assert "RANDOM" in r.stdout and "384-d" in r.stdout and spec.embedding_hash() in r.stdout
    assert spec.weights_sha256 in r.stdout
    d = json.loads(CliRunner().invoke(main, ["info", str(p), "--json"]).stdout)
    assert d["spec"]["dim"] == 384 and d["file_bytes"] == p.stat().st_size


def test_info_cache(tiny, photo_dir, tmp_path):
    cache = tmp_path / "c"
    rep = embed_into_cache([photo_dir], Encoder(tiny, provider="cpu"), cache, progress=False)
    d = json.loads(CliRunner().invoke(main, ["info", str(cache), "--json"]).stdout)
    assert d["rows"] == rep.rows and d["dim"] == 16 and d["model_path"] == str(tiny)
    assert d["files"]["img_emb/"] == sum(p.stat().st_size for p in (cache / "img_emb").glob("*"))
    assert d["segments"] == 1 and d["dead_rows"] == 0
    r = CliRunner().invoke(main, ["info", str(cache)])
    assert r.exit_code == 0 and f"rows       {rep.rows} x 16" in r.stdout


def test_info_on_something_else_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["info", str(tmp_path)])
    assert r.exit_code == 2 and "not a simx feature cache" in r.stderr
