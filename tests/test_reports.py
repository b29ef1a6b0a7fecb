"""HTML reports of ``simx search --html`` and ``simx eval --html``, opened in a real browser,
and ``simx bench --plot``.

The pages are loaded in Debian's headless Chromium (one browser for the module, driven
over the DevTools pipe by tests/cdp.py, kept off the network). Each page must decode
every thumbnail (``naturalWidth > 0``), log no console error, and run nothing: the
corpus has file and folder names that are HTML/JS injections, and an image that was
damaged and one that was deleted after embedding, which must show as placeholders with
a reason. Chromium missing is a failure, not a skip: ``.ci/run`` installs it.

Set ``SIMX_DOCS_DIR=docs`` to also refresh the screenshots the README shows.
"""

from __future__ import annotations

import base64
import builtins
import copy
import io
import json
import os
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from cdp import Browser, find_chromium  # noqa: E402
from test_search_eval import make_holidays, make_ukbench  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from simx.report import html as report
from simx.cli.app import main

# Names that would run script if they reached the page unescaped. The first needs a
# folder: "/" cannot be in a file name, so "<script>alert(1)<" / "script>.jpg" spells it.
HOSTILE = (
    "<script>alert(1)</script>.jpg",
    'a"onerror="alert(2).png',
    "<img src=x onerror=alert(3)>.jpg",
    "'><svg onload=alert(4)>.png",
    "&lt;b&gt;not bold&lt;/b&gt;.jpg",
)
DAMAGED, DELETED = "coffee.jpg", "camera.png"
ROOT = Path(__file__).resolve().parents[1]

# In-page checks, run through DevTools (which the page's CSP does not restrict).
JS_IMAGES = """Array.from(document.images).map(i => ({
  ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth, h: i.naturalHeight,
  data: i.getAttribute('src').startsWith('data:image/jpeg;base64,')}))"""
JS_INJECTED = """(() => {
  const bad = [];
  for (const el of document.querySelectorAll('*')) {
    if (['SCRIPT', 'IFRAME', 'OBJECT', 'EMBED', 'LINK', 'BASE', 'FORM'].includes(el.tagName))
      bad.push(el.tagName);
    for (const a of el.attributes) if (a.name.toLowerCase().startsWith('on')) bad.push(a.name);
  }
  return bad; })()"""


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium; .ci/run does it): "
                    "the report tests must run in a real browser")
    b = Browser(exe)
    yield b
    b.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("reports") / "tiny.onnx")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, photos, tiny) -> dict:
    """Photos under hostile names embedded into a cache; then one damaged, one deleted."""
    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    imgs = root / "imgs"
    imgs.mkdir()
    names = list(photos)
    files = []
    for i, n in enumerate(names):
        ext = "png" if n == "camera" or i % 4 == 3 else "jpg"
        files.append(imgs / f"{n}.{ext}")
    for i, h in enumerate(HOSTILE):
        files.append(imgs / h)
    arrays = list(photos.values())
    for i, f in enumerate(files):
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arrays[i % len(arrays)]).save(f, quality=90)
    cache = root / "cache"
    r = CliRunner().invoke(main, ["embed", str(imgs), "--model", str(tiny), "--cache", str(cache)])
    assert r.exit_code == 0, r.output
    rows = json.loads((cache / "cache.json").read_text())["count"]
    assert rows == len(files)
    damaged = imgs / DAMAGED
    damaged.write_bytes(damaged.read_bytes()[:300])  # truncated JPEG
    (imgs / DELETED).unlink()
    return {"root": root, "imgs": imgs, "cache": cache, "rows": rows, "tiny": tiny}


def _docs(browser: Browser, name: str) -> None:
    out = os.environ.get("SIMX_DOCS_DIR")
    if out:
        browser.screenshot(Path(out) / name, full_page=True, max_height=1400)


def _static_checks(text: str) -> None:
    """What the source must hold whatever the browser does: the CSP, no script, and no
    URL but the generated data URIs (the SVG namespace is a name, never fetched)."""
    assert f'<meta http-equiv="Content-Security-Policy" content="{report.esc(report.CSP)}">' in text
    tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, attrs))

    Tags().feed(text)
    assert {t for t, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "header",
                                    "h1", "h2", "div", "small", "code", "dl", "dt", "dd",
                                    "section", "figure", "img", "figcaption", "span", "b", "ol",
                                    "li", "p", "svg", "line", "rect", "text"}
    attrs = [(n, v or "") for _, a in tags for n, v in a]
    assert not [n for n, _ in attrs if n.startswith("on")]
    urls = [v for n, v in attrs if n in ("src", "href", "xlink:href")]
    assert urls and all(u.startswith("data:image/jpeg;base64,") for u in urls)
    assert {v for _, v in attrs if "://" in v} <= {"http://www.w3.org/2000/svg"}


def _browser_checks(browser: Browser, path: Path, n_images: int) -> list[dict]:
    load = browser.open(path)
    assert load.problems() == []
    imgs = browser.evaluate(JS_IMAGES)
    assert len(imgs) == n_images
    assert all(i["ok"] for i in imgs), [i for i in imgs if not i["ok"]]
    assert all(i["data"] for i in imgs)
    assert max(max(i["w"], i["h"]) for i in imgs) <= report.QUERY_SIDE
    assert browser.evaluate(JS_INJECTED) == []
    return imgs


# ----------------------------------------------------------------------------- search
def test_search_report_in_browser(browser, corpus, tmp_path):
    imgs, cache, n = corpus["imgs"], corpus["cache"], corpus["rows"]
    queries = [str(imgs / HOSTILE[0]), str(imgs / "chelsea.jpg")]
    out = tmp_path / "search.html"
    r = CliRunner().invoke(main, ["search", *queries, "--cache", str(cache), "-k", str(n),
                                  "--model", str(corpus["tiny"]), "--html", str(out)])
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    _static_checks(text)
    # Every result of both queries, minus the damaged and the deleted file, is an image.
    _browser_checks(browser, out, n_images=2 + 2 * n - 2 * 2)
    body = browser.evaluate("document.body.innerText")
    for h in HOSTILE:
        assert h in body  # shown as text, literally (also the &lt; one: not double-decoded)
    assert "not bold" not in browser.evaluate(
        "Array.from(document.querySelectorAll('b')).map(b => b.textContent).join()")
    ph = browser.evaluate("Array.from(document.querySelectorAll('.ph')).map(e => "
                          "e.closest('figure').innerText)")
    assert len(ph) == 4
    assert sum("file not found" in p and DELETED in p for p in ph) == 2
    assert sum("truncat" in p.lower() and DAMAGED in p for p in ph) == 2
    banner = browser.evaluate("(() => { const b = document.querySelector('.random');"
                              " return b && [b.innerText, parseFloat(getComputedStyle(b).fontSize)]; })()")
    assert banner and "RANDOM WEIGHTS" in banner[0] and banner[1] >= 24
    assert "tiny-test" in body and str(cache.resolve()) in body
    assert "previews missing\n2" in body  # the damaged and the deleted file
    # ranks and scores as the search found them, in order
    first = json.loads(CliRunner().invoke(main, ["search", queries[0], "--cache", str(cache),
                                                 "-k", "3", "--json"]).output)[0]["hits"]
    sec = browser.evaluate("Array.from(document.querySelectorAll('section.q')[0]"
                           ".querySelectorAll('li figure')).slice(0, 3).map(f => "
                           "[f.querySelector('figcaption').innerText, f.title])")
    assert len(sec) == 3
    for h, (cap, title) in zip(first, sec):
        # the caption shows the path under the folder the header names; the title has it all
        assert cap.startswith(f"#{h['rank']} {h['score']:.4f}") and title == h["path"]
        assert h["path"] == str(imgs / cap.split("\n", 1)[1])
    assert f"result paths under\n{imgs}" in body
    _docs(browser, "search_report.jpg")


def test_search_report_pretrained_has_no_banner(corpus, tmp_path, monkeypatch):
    results = [{"query": str(corpus["imgs"] / "chelsea.jpg"), "kind": "image", "hits": []},
               {"query": "a <b>cat</b>", "kind": "text", "hits": []}]
    meta = json.loads((corpus["cache"] / "cache.json").read_text())
    monkeypatch.setattr(report, "_cache_meta", lambda _d: ({**meta, "weights": "pretrained"}, 3))
    text = report.search_report(results, corpus["cache"])
    assert "RANDOM WEIGHTS" not in text and 'class="random"' not in text
    assert "a &lt;b&gt;cat&lt;/b&gt;" in text and "no results" in text


def test_bad_output_paths_fail_first_in_one_line(corpus, tmp_path):
    r = CliRunner().invoke(main, ["search", str(corpus["imgs"] / "chelsea.jpg"), "--cache",
                                  str(corpus["cache"]), "--html", str(tmp_path / "no" / "x.html")])
    assert r.exit_code == 2
    errors = [line for line in r.output.splitlines() if line.startswith("simx: error")]
    assert len(errors) == 1 and "does not exist" in errors[0]
    # eval and bench check the output before the work: nothing embedded, nothing measured
    bad = str(tmp_path / "no" / "x")
    r = CliRunner().invoke(main, ["eval", "--dataset", "ukbench", "--root", str(corpus["imgs"]),
                                  "--model", str(corpus["tiny"]), "--cache", str(tmp_path / "c"),
                                  "--html", bad + ".html"])
    assert r.exit_code == 2 and "does not exist" in r.output and not (tmp_path / "c").exists()
    r = CliRunner().invoke(main, ["bench", "--model", str(corpus["tiny"]), "--plot", bad + ".png"])
    assert r.exit_code == 2 and "--plot" in r.output and "batch" not in r.output


# ----------------------------------------------------------------------------- eval
def _num(path: str) -> int:
    return int(re.search(r"(\d+)\.jpg", path).group(1))


def test_eval_reports_in_browser(browser, rgb_photos, tiny, tmp_path):
    # A dataset root whose name is an injection: it is in every path on the page.
    uk = make_ukbench(tmp_path / '"><img src=x onerror=alert(5)>', rgb_photos)
    out = tmp_path / "ukbench.html"
    r = CliRunner().invoke(main, ["eval", "--dataset", "ukbench", "--root", str(uk), "--model",
                                  str(tiny), "--cache", str(tmp_path / "c1"), "--html", str(out),
                                  "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output[r.output.index("{"):])
    assert "per_query" not in res  # the detail goes to the page, the JSON stays as it was
    n = res["queries"]
    text = out.read_text(encoding="utf-8")
    _static_checks(text)
    _browser_checks(browser, out, n_images=n * 5)  # each query and its top 4
    top = browser.evaluate("document.querySelector('.metric').innerText")
    assert f"N-S score {res['metrics']['ns_score']:.3f}" in top
    evil = '"><img src=x onerror=alert(5)>'
    assert evil in browser.evaluate("document.body.innerText")  # the dataset root, as text
    assert browser.evaluate("Array.from(document.querySelectorAll('figure')).filter(f => "
                            f"f.title.includes({json.dumps(evil)})).length") == n * 5
    rows = browser.evaluate("""Array.from(document.querySelectorAll('section.q')).map(s => ({
      q: s.querySelector('figure').title, score: s.querySelector('.qscore').innerText,
      hits: Array.from(s.querySelectorAll('li figure')).map(f => [f.title, f.className])}))""")
    assert len(rows) == n
    scores = [int(x["score"].split("/")[0]) for x in rows]
    assert scores == sorted(scores) and scores[0] < 4  # worst first; the random model fails some
    for row, s in zip(rows, scores):
        g = _num(row["q"]) // 4
        marks = [cls == "ok" for _, cls in row["hits"]]
        assert marks == [_num(p) // 4 == g for p, _ in row["hits"]]
        assert sum(marks) == s
    assert browser.evaluate("document.querySelectorAll('svg rect').length") == 5
    counts = browser.evaluate("Array.from(document.querySelectorAll('svg text.count'))"
                              ".map(t => +t.textContent)")
    assert sum(counts) == n  # every query is in the histogram, not only the rows shown
    _docs(browser, "eval_report.jpg")

    # Holidays: AP per query, the query left out of its own ranking, top 10 shown.
    hol = make_holidays(tmp_path / "hol", rgb_photos)
    out2 = tmp_path / "holidays.html"
    r = CliRunner().invoke(main, ["eval", "--dataset", "holidays", "--root", str(hol), "--model",
                                  str(tiny), "--cache", str(tmp_path / "c2"), "--html", str(out2),
                                  "--html-rows", "3"])
    assert r.exit_code == 0, r.output
    _browser_checks(browser, out2, n_images=3 * 11)
    rows = browser.evaluate("""Array.from(document.querySelectorAll('section.q')).map(s => ({
      q: s.querySelector('figure').title, ap: s.querySelector('.qscore').innerText,
      hits: Array.from(s.querySelectorAll('li figure')).map(f => [f.title, f.className])}))""")
    aps = [float(x["ap"].split()[1]) for x in rows]
    assert len(rows) == 3 and aps == sorted(aps)
    for row in rows:
        assert row["q"] not in [p for p, _ in row["hits"]]
        assert [c == "ok" for _, c in row["hits"]] == [
            _num(p) // 100 == _num(row["q"]) // 100 for p, _ in row["hits"]]
    assert "3 of 8 queries shown" in browser.evaluate("document.body.innerText")


def test_eval_per_query_detail_agrees_with_metrics(rgb_photos, tiny, tmp_path):
    from simx.retrieval.evaluate import evaluate

    uk = make_ukbench(tmp_path / "uk", rgb_photos)
    r = evaluate("ukbench", uk, tiny, cache_dir=tmp_path / "c", detail=True, progress=False)
    per = r["per_query"]
    assert len(per) == r["queries"]
    assert np.isclose(np.mean([q["score"] for q in per]), r["metrics"]["ns_score"])
    assert all(len(q["hits"]) == 4 and q["hits"][0]["score"] >= q["hits"][-1]["score"] for q in per)
    hol = make_holidays(tmp_path / "hol", rgb_photos)
    r = evaluate("holidays", hol, tiny, cache_dir=tmp_path / "c2", detail=True, progress=False)
    assert np.isclose(np.mean([q["score"] for q in r["per_query"]]), r["metrics"]["map"])
    assert np.isclose(np.mean([q["ap_at_10"] for q in r["per_query"]]), r["metrics"]["map_at_10"])
    assert all(q["positives"] >= 1 for q in r["per_query"])
    with pytest.raises(report.ReportError, match="per-query"):
        report.eval_report({k: v for k, v in r.items() if k != "per_query"})


# ----------------------------------------------------------------------------- defence in depth
def test_csp_makes_an_escaping_bug_inert(browser, tmp_path):
    """Were a name ever to slip through unescaped, the page's CSP still runs nothing."""
    out = tmp_path / "injected.html"
    out.write_text(report.page("t", ['<p id="p">x</p><script>document.title = "ran";'
                                     'alert(9)</script><img src=x onerror="alert(10)">']))
    load = browser.open(out)
    assert browser.evaluate("document.title") == "t"
    problems = load.problems()
    assert not any("dialog" in p for p in problems)
    # ...and the attempt is visible: Chromium reports each blocked script as an error.
    assert any("Content Security Policy" in p for p in problems), problems


def test_escape_and_thumbnails(photos, tmp_path):
    assert report.esc('<a href="x">\'&') == "&lt;a href=&quot;x&quot;&gt;&#x27;&amp;"
    assert report.esc("bad\udcff<") == "bad\ufffd&lt;"  # a non-UTF-8 file name
    from PIL import Image

    big = tmp_path / "hubble.jpg"
    Image.fromarray(photos["hubble_deep_field"]).save(big)
    t = report.make_thumbnail(big, 256)
    assert t.uri and max(t.width, t.height) == 256 and t.reason is None
    im = Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1])))
    assert im.format == "JPEG" and im.size == (t.width, t.height)
    small = report.make_thumbnail(tmp_path / "hubble.jpg", 4000)
    assert (small.width, small.height) == photos["hubble_deep_field"].shape[1::-1]  # never enlarged
    # A large JPEG takes the reduced-scale (draft) decode: same picture as the exact path.
    import cv2

    from simx.images.decode import load_rgb

    a = photos["astronaut"]
    Image.fromarray(cv2.resize(a, (a.shape[1] * 2, a.shape[0] * 2))).save(tmp_path / "a.jpg",
                                                                          quality=95)
    assert report._draft_jpeg(tmp_path / "a.jpg", 256, False) is not None
    assert report._draft_jpeg(tmp_path / "a.jpg", 4000, False) is None  # too small: exact path
    t = report.make_thumbnail(tmp_path / "a.jpg", 256)
    got = np.asarray(Image.open(io.BytesIO(base64.b64decode(t.uri.split(",", 1)[1]))),
                     dtype=np.float32)
    exact = cv2.resize(load_rgb(tmp_path / "a.jpg"), (t.width, t.height),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    assert np.abs(got - exact).mean() < 6  # JPEG q80 + DCT-domain scaling (3.4 measured)
    assert np.abs(got - exact[:, ::-1]).mean() > 20  # a flip or a channel swap would show
    assert np.abs(got - exact[..., ::-1]).mean() > 20
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    bad = report.make_thumbnail(tmp_path / "junk.jpg", 256)
    assert bad.uri is None and "not an image" in bad.reason
    fig = report.figure(bad, "c")
    assert 'class="ph"' in fig and "<img" not in fig
    # a Thumb built by other code with a URI that is not an image data URI never lands in src
    evil = report.Thumb('javascript:alert(1)" onerror="alert(2)', 10, 10)
    fig = report.figure(evil, "c")
    assert "<img" not in fig and "javascript" not in fig and "not an image data URI" in fig


# ----------------------------------------------------------------------------- bench plot
def _bench_row(b: int, img_s: float, eff: float | None, **extra) -> dict:
    return {"batch_size": b, "model_only": {"img_s": img_s, "efficiency": eff},
            "end_to_end": {"img_s": img_s * 0.9, "ratio_to_model_only": 0.9}, **extra}


def test_bench_series_one_line_per_path():
    res = {"model": {"id": "m", "precision": "fp32"},
           "config": {"providers": ["CPUExecutionProvider"]},
           "results": [_bench_row(8, 20.0, 0.5), _bench_row(1, 10.0, 0.4),
                       _bench_row(1, 30.0, 0.7, precision="int8"),
                       _bench_row(8, 50.0, 0.8, precision="int8")],
           "paths": [{"provider": "CUDAExecutionProvider", "precision": "fp16",
                      "results": [_bench_row(1, 100.0, None), _bench_row(32, 900.0, None)]}]}
    from simx.report.plot import bench_series

    got = {(s["provider"], s["precision"]): s for s in bench_series([res])}
    assert set(got) == {("CPU", "fp32"), ("CPU", "int8"), ("CUDA", "fp16")}
    assert got["CPU", "fp32"]["batch"] == [1, 8] and got["CPU", "fp32"]["img_s"] == [10.0, 20.0]
    assert got["CPU", "int8"]["efficiency"] == [0.7, 0.8]
    assert np.allclose(got["CPU", "int8"]["e2e_efficiency"], [0.63, 0.72])
    assert got["CUDA", "fp16"]["efficiency"] == [None, None]
    # a run that says what it ran (provider and precision blocks, GEMM in its own precision)
    ov = {"model": {"id": "m", "precision": "fp32"}, "config": {"providers": ["X"]},
          "precision": {"ran": "bf16", "provider": "OpenVINOExecutionProvider"},
          "results": [{**_bench_row(1, 40.0, 1.5),
                       "model_only": {"img_s": 40.0, "efficiency": 1.5,
                                      "efficiency_precision": 0.6}}]}
    (s,) = bench_series([ov])
    assert (s["provider"], s["precision"], s["efficiency_precision"]) == ("OpenVINO", "bf16", [0.6])
    # the key simx bench writes (efficiency_same_precision) is the one drawn
    ov["results"][0]["model_only"] = {"img_s": 40.0, "efficiency": 1.5, "efficiency_same_precision": 0.7}
    (s,) = bench_series([ov])
    assert s["efficiency_precision"] == [0.7]


def test_plot_module_merges_json_files(tmp_path):
    from simx.report.plot import main as plot_main

    # a committed real run, and the same run as if it had been an int8 path
    a = json.loads((ROOT / "benchmarks/results/bench_dinov2-small_images_amd-epyc-2c.json")
                   .read_text())
    b = {**copy.deepcopy(a), "precision": {"ran": "int8", "provider": "CPUExecutionProvider"}}
    for row in b["results"]:
        row["model_only"]["img_s"] *= 2
    for name, r in (("a.json", a), ("b.json", b)):
        (tmp_path / name).write_text(json.dumps(r))
    out = tmp_path / "paths.png"
    assert plot_main([str(tmp_path / "a.json"), str(tmp_path / "b.json"), "-o", str(out)]) == 0
    from PIL import Image

    assert Image.open(out).format == "PNG"
    from simx.report.plot import bench_series

    fp32, int8 = bench_series([a, b])
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    assert fp32["batch"] == int8["batch"] == [r["batch_size"] for r in a["results"]]
    assert np.allclose(int8["img_s"], [2 * v for v in fp32["img_s"]])
    assert plot_main([str(tmp_path / "missing.json"), "-o", str(out)]) == 2


def test_bench_plot_cli(tiny, rgb_photos, tmp_path):
    from PIL import Image

    small = tmp_path / "small"  # small photos: the tiny model's end-to-end run is all decoding
    small.mkdir()
    for n, a in list(rgb_photos.items())[:4]:
        Image.fromarray(a).resize((64, 48)).save(small / f"{n}.jpg")
    out = tmp_path / "bench.png"
    r = CliRunner().invoke(main, ["bench", "--model", str(tiny), "--provider", "cpu",
                                  "--batch-sizes", "1,2", "--seconds", "0.05", "--warmup", "1",
                                  "--rounds", "1", "--sgemm-size", "128", "--images",
                                  str(small), "--plot", str(out)])
    assert r.exit_code == 0, r.output
    im = Image.open(out)
    assert im.format == "PNG" and im.size[0] > 1000 and im.size[1] > 400
    a = np.asarray(im.convert("RGB"))
    # drawn lines: the default cycle's first colour (#1f77b4) is on the page
    assert np.any(np.all(np.abs(a.astype(int) - [31, 119, 180]) < 8, axis=2))
    if os.environ.get("SIMX_DOCS_DIR"):
        Path(os.environ["SIMX_DOCS_DIR"], "bench_plot.png").write_bytes(out.read_bytes())


def test_plot_without_matplotlib_is_one_clear_error(monkeypatch):
    real = builtins.__import__

    def no_mpl(name, *a, **kw):
        if name.split(".")[0] == "matplotlib":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    from simx.report.plot import PlotError, check_viz

    with pytest.raises(PlotError, match=r"\[viz\]"):
        check_viz()
