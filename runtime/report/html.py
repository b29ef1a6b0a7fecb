"""Self-contained HTML reports for ``simx search --html`` and ``simx eval --html``.

Why this shape:

* **One file, nothing external.** Thumbnails are JPEG data URIs made here with OpenCV
  (at most ``QUERY_SIDE`` px on the long side for queries, ``HIT_SIDE`` for results),
  styles are inline, and there is no script at all, so the page can be mailed, attached
  to a CI run or opened offline and looks the same everywhere.
* **Hostile names are text.** Every string that comes from a file name, a cache or a
  model goes through :func:`esc` (``html.escape`` with ``quote=True``), in text and in
  attributes alike; the only URIs on the page are the ``data:image/jpeg`` ones this
  module generated. On top of that the page carries a Content-Security-Policy that
  allows no script and no network load at all (``default-src 'none'``), so even a
  mistake in escaping could not run anything: injected script would be inert by
  construction.
* **A bad image never breaks the page.** A file that is gone, unreadable or corrupt
  gets a placeholder box with the one-line reason simx's decoder gives.
* **What the model saw.** Thumbnails follow the cache's own EXIF rule and simx's decoding
  policy (:func:`simx.images.decode.load_rgb`; large JPEGs are decoded at reduced scale first,
  which looks the same at thumbnail size and is 3x faster), so a report shows the
  pictures that were embedded.
* **Random weights shout.** A model exported with ``--weights random`` gives neighbours
  that mean nothing; the page says so in a banner that cannot be missed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simx.core.errors import SimxError, first_line
from simx.core.version import __version__

QUERY_SIDE = 256  # px, long side of a query thumbnail
HIT_SIDE = 160  # px, long side of a result thumbnail (pages hold many of these)
JPEG_QUALITY = 80
EVAL_MAX_ROWS = 200  # queries shown in an eval report (the worst ones); the histogram has all
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


_DATA_URI = re.compile(r"data:image/(?:jpeg|png);base64,[A-Za-z0-9+/]*={0,2}")


class ReportError(SimxError):
    """A report that cannot be written (bad output path, nothing to show)."""


# ----------------------------------------------------------------------------- escaping
def esc(value: object) -> str:
    """Text safe in HTML text and in quoted attributes.

    File names may hold bytes that are not UTF-8 (Python keeps them as lone surrogates);
    those become U+FFFD so that the page can always be written as UTF-8.
    """
    s = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return html.escape(s, quote=True)


# ----------------------------------------------------------------------------- thumbnails
@dataclass(frozen=True)
class Thumb:
    """A data URI with its pixel size, or the reason there is none."""

    uri: str | None
    width: int = 0
    height: int = 0
    reason: str | None = None


def make_thumbnail(path: str | os.PathLike[str], side: int, *, exif_transpose: bool = False,
                   quality: int = JPEG_QUALITY) -> Thumb:
    """A JPEG data URI of ``path`` fitted into ``side`` x ``side`` px (never enlarged).

    Decoding goes through simx's own decoder, so the reasons match ``failed.jsonl``.
    Never raises for a bad image: the Thumb then carries the reason instead.
    """
    import cv2

    from simx.images.decode import load_rgb

    try:
        rgb = _draft_jpeg(path, side, exif_transpose)
        if rgb is None:
            rgb = load_rgb(path, exif_transpose=exif_transpose)
    except SimxError as e:
        return Thumb(None, reason=first_line(e))
    except Exception as e:  # a decoder failure simx did not foresee: still one line, no crash
        return Thumb(None, reason=first_line(e, "cannot decode"))
    h, w = rgb.shape[:2]
    f = min(1.0, side / max(h, w))
    if f < 1.0:
        size = (max(1, round(w * f)), max(1, round(h * f)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        return Thumb(None, reason="JPEG encoding of the thumbnail failed")
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")
    return Thumb(uri, int(rgb.shape[1]), int(rgb.shape[0]))


def _draft_jpeg(path: str | os.PathLike[str], side: int, exif_transpose: bool) -> Any:
    """A JPEG decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (Pillow's ``draft``), or None.

    Why: a 12 MP photo's thumbnail took 195 ms from a full decode and 64 ms from a draft
    (benchmarks/results/report_scale_amd-epyc-2c.md), and a report of 100 queries x top-10
    thumbnails up to 1100 distinct images. Only clean, large
    JPEGs take this path; anything else (other formats, small or oversized images, any
    error) returns None and goes through :func:`simx.images.decode.load_rgb`, which also gives
    the one-line reason when the file is bad.
    """
    import numpy as np
    from PIL import Image, ImageOps

    from simx.images.decode import MAX_PIXELS

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.format != "JPEG" or w * h > MAX_PIXELS or max(w, h) < 2 * side:
                return None
            im.draft("RGB", (max(1, w * side // max(w, h)), max(1, h * side // max(w, h))))
            out = ImageOps.exif_transpose(im) if exif_transpose else im
            return np.ascontiguousarray(np.asarray(out.convert("RGB")))
    except Exception:  # any trouble: the exact decoder decides, and says why
        return None


@dataclass
class Thumbnails:
    """Thumbnails made once per (path, side): a report shows the same image many times."""

    exif_transpose: bool = False
    _memo: dict[tuple[str, int], Thumb] = field(default_factory=dict)

    def get(self, path: str, side: int) -> Thumb:
        key = (path, side)
        if key not in self._memo:
            self._memo[key] = make_thumbnail(path, side, exif_transpose=self.exif_transpose)
        return self._memo[key]

    def prefetch(self, keys: Iterable[tuple[str, int]], workers: int | None = None) -> None:
        """Make the thumbnails of ``keys`` on all cores (decoders and resizers release
        the GIL), so that building a page costs about 1/cores of the serial time."""
        from concurrent.futures import ThreadPoolExecutor

        todo = list(dict.fromkeys(k for k in keys if k not in self._memo))
        if not todo:
            return
        n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        with ThreadPoolExecutor(n, thread_name_prefix="simx-thumb") as pool:
            made = pool.map(lambda k: make_thumbnail(k[0], k[1],
                                                     exif_transpose=self.exif_transpose), todo)
            self._memo.update(zip(todo, made))

    @property
    def failed(self) -> int:
        return sum(1 for t in self._memo.values() if t.uri is None)


def figure(thumb: Thumb | None, caption: str, *, cls: str = "", alt: str = "",
           title: str = "") -> str:
    """A <figure> with the thumbnail (or a placeholder and its reason) and a caption.

    ``caption`` is HTML built by the caller from escaped parts; ``alt``/``title`` are raw text.
    """
    c = f' class="{esc(cls)}"' if cls else ""
    t = f' title="{esc(title)}"' if title else ""
    if thumb is None:
        pic = ""
    elif thumb.uri is not None and _DATA_URI.fullmatch(thumb.uri):
        pic = (f'<img src="{thumb.uri}" width="{int(thumb.width)}" height="{int(thumb.height)}" '
               f'alt="{esc(alt)}">')
    else:  # no image, or a URI that is not one of ours: never put it in an attribute
        why = thumb.reason if thumb.uri is None else "not an image data URI"
        pic = f'<div class="ph"><b>no preview</b><span>{esc(why)}</span></div>'
    return f"<figure{c}{t}>{pic}<figcaption>{caption}</figcaption></figure>"


# ----------------------------------------------------------------------------- page
_STYLE = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:16px 24px;
color:#1d2329;background:#f6f7f9}
h1{font-size:22px;margin:0 0 8px}
h2{font-size:16px;margin:0 0 6px}
header{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:12px 16px;margin-bottom:14px}
dl.meta{display:grid;grid-template-columns:max-content minmax(0,1fr) max-content minmax(0,1fr);gap:2px 14px;margin:0}
dl.meta dt{color:#5b6673}dl.meta dd{margin:0;overflow-wrap:anywhere}
.random{background:#b00020;color:#fff;font-size:30px;font-weight:800;letter-spacing:.02em;
padding:14px 18px;border-radius:6px;margin-bottom:14px;text-align:center}
.random small{display:block;font-size:15px;font-weight:500;letter-spacing:0}
.metric{font-size:34px;font-weight:800;margin:6px 0 2px}
.metric small{font-size:15px;font-weight:500;color:#5b6673}
section.q{display:flex;gap:14px;align-items:flex-start;background:#fff;border:1px solid #dde1e6;
border-radius:6px;padding:10px;margin-bottom:10px}
section.q>figure{flex:0 0 auto;width:260px}
ol.hits{display:flex;flex-wrap:wrap;gap:8px;list-style:none;margin:0;padding:0}
figure{margin:0;width:168px}
figure img,.ph{display:block;border:3px solid #dde1e6;border-radius:4px;background:#eceff3;max-width:100%;height:auto}
section.q>figure img{border-color:#3b6fd4}
.ph{width:100%;min-height:96px;padding:8px;color:#7a4a00;background:#fff4e0;border:3px dashed #d9a441;
font-size:12px;overflow-wrap:anywhere}
.ph b{display:block}
figcaption{font-size:12px;margin-top:3px;overflow-wrap:anywhere}
.rank{font-weight:700}.score{font-variant-numeric:tabular-nums;color:#334}
.path{display:block;color:#5b6673;font-family:ui-monospace,Menlo,Consolas,monospace;font-size:11px}
.ok img,.ok .ph{border:4px solid #1b8a3a}
.bad img,.bad .ph{border:4px dashed #c62828}
.mark{font-weight:800}.ok .mark{color:#1b8a3a}.bad .mark{color:#c62828}
.qscore{font-size:20px;font-weight:800}
.text-query{font-size:16px;font-weight:600;width:260px;padding:10px;background:#eef3fb;border-radius:4px;
overflow-wrap:anywhere}
.note{color:#5b6673}
svg text{font:11px system-ui,sans-serif;fill:#334}
"""


def page(title: str, body: Iterable[str]) -> str:
    """A complete HTML document with the strict CSP and no script."""
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">',
        '<meta name="referrer" content="no-referrer">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>\n",
        *body,
        "\n</body></html>\n",
    ])


def meta_list(items: Sequence[tuple[str, object]]) -> str:
    rows = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v is not None)
    return f'<dl class="meta">{rows}</dl>'


def random_banner(weights: object) -> str:
    """The unmissable warning for random-weight models ('' otherwise)."""
    if str(weights).lower() != "random":
        return ""
    return ('<div class="random" role="alert">RANDOM WEIGHTS: these results mean nothing'
            "<small>This model was exported with <code>--weights random</code> (for speed tests). "
            "Export it with pretrained weights before judging neighbours.</small></div>")


def check_output(path: str | os.PathLike[str], option: str = "--html") -> Path:
    """Refuse an output path that cannot be written, before minutes of work, not after."""
    out = Path(path)
    if out.is_dir():
        raise ReportError(f"{option} {out}: is a folder; give a file name")
    if not out.parent.is_dir():
        raise ReportError(f"{option} {out}: folder {out.parent} does not exist")
    return out


def write_file(path: str | os.PathLike[str], data: bytes, option: str = "--html") -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a page or plot."""
    out = check_output(path, option)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ReportError(f"cannot write {out}: {e.strerror or e}") from None
    return out


def write_page(path: str | os.PathLike[str], text: str) -> Path:
    return write_file(path, text.encode("utf-8"), "--html")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _hit_caption(rank: int, score: float | None, path: str, mark: str = "") -> str:
    s = f' <span class="score">{score:.4f}</span>' if score is not None else ""
    m = f'<span class="mark">{esc(mark)}</span> ' if mark else ""
    return f'{m}<span class="rank">#{rank}</span>{s}<span class="path">{esc(path)}</span>'


def _under(path: object, root: str) -> str:
    """``path`` relative to ``root`` when it lies under it: captions stay short, and the
    full path is in the figure's title (a tooltip)."""
    p = str(path)
    r = root.rstrip(os.sep)
    if r and p.startswith(r + os.sep):
        return p[len(r) + 1:]
    return p


def _common_dir(paths: Sequence[str]) -> str:
    """The deepest folder holding every path ('' when there is none worth showing)."""
    if len(set(paths)) < 2:
        return ""
    try:
        common = os.path.commonpath(paths)
    except ValueError:  # mixed absolute and relative paths
        return ""
    return common if common not in ("", os.sep, ".") and common not in paths else ""


# ----------------------------------------------------------------------------- search
def _cache_meta(cache_dir: Path) -> tuple[dict[str, Any], int | None]:
    """cache.json through the cache reader (any format it knows), with its row count."""
    from simx.cache import FeatureCache

    try:
        c = FeatureCache(cache_dir)
        return dict(c.meta or {}), len(c)
    except Exception:  # the search already ran; a report must not fail on cache details
        import json

        try:
            return json.loads((cache_dir / "cache.json").read_text()), None
        except (OSError, ValueError):
            return {}, None


def search_report(results: Sequence[dict[str, Any]], cache_dir: str | os.PathLike[str], *,
                  k: int | None = None, index: str | None = None, model: str | None = None,
                  query_side: int = QUERY_SIDE, hit_side: int = HIT_SIDE) -> str:
    """The HTML page for ``simx search`` results (the list ``search_cache`` returns)."""
    cache_dir = Path(cache_dir)
    meta, rows = _cache_meta(cache_dir)
    opts = meta.get("options") or {}
    thumbs = Thumbnails(exif_transpose=bool(opts.get("exif_transpose", False)))
    model_id = meta.get("model_id", "unknown")
    weights = meta.get("weights", "unknown")
    base = _common_dir([str(h["path"]) for res in results for h in res.get("hits") or []])
    thumbs.prefetch([(str(r.get("query", "")), query_side) for r in results
                     if r.get("kind") != "text"]
                    + [(str(h["path"]), hit_side) for r in results for h in r.get("hits") or []])
    body = [
        "<header><h1>simx search</h1>",
        meta_list([
            ("model", model_id),
            ("model file (--model)", model),
            ("weights", weights),
            ("precision", meta.get("precision")),
            ("source", meta.get("source")),
            ("model hash", meta.get("spec_hash")),
            ("cache", str(cache_dir.resolve())),
            ("cache rows", rows if rows is not None else meta.get("count")),
            ("options", ", ".join(f"{a}={b}" for a, b in sorted(opts.items())) or "default"),
            ("result paths under", base or None),
            ("previews missing", thumbs.failed or None),
            ("queries", len(results)),
            ("top-k", k),
            ("index", index),
            ("generated", f"{_now()} by simx {__version__}"),
        ]),
        "</header>",
        random_banner(weights),
    ]
    if not results:
        body.append('<p class="note">No queries.</p>')
    for qi, res in enumerate(results, 1):
        label = str(res.get("query", ""))
        if res.get("kind") == "text":
            head = f'<div class="text-query">text query {qi}: &ldquo;{esc(label)}&rdquo;</div>'
        else:
            head = figure(thumbs.get(label, query_side),
                          f'<span class="rank">query {qi}</span><span class="path">{esc(label)}</span>',
                          alt=f"query {qi}", title=label)
        hits = res.get("hits") or []
        items = "".join(
            "<li>" + figure(thumbs.get(str(h["path"]), hit_side),
                            _hit_caption(int(h["rank"]), float(h["score"]), _under(h["path"], base)),
                            alt=f"result {h['rank']}", title=str(h["path"])) + "</li>"
            for h in hits)
        if not hits:
            items = '<li class="note">no results</li>'
        body.append(f'<section class="q">{head}<ol class="hits">{items}</ol></section>\n')
    return page(f"simx search: {model_id}", body)


def write_search_report(path: str | os.PathLike[str], results: Sequence[dict[str, Any]],
                        cache_dir: str | os.PathLike[str], **kw: Any) -> Path:
    return write_page(path, search_report(results, cache_dir, **kw))


# ----------------------------------------------------------------------------- eval
def svg_histogram(values: Sequence[float], edges: Sequence[float], *, xlabel: str,
                  labels: Sequence[str] | None = None, width: int = 520, height: int = 190) -> str:
    """An inline SVG bar chart of ``values`` counted into ``[edges[i], edges[i+1])`` bins
    (the last bin closed). No script, no external resources; bars carry their counts."""
    import numpy as np

    counts, _ = np.histogram(np.asarray(values, dtype=np.float64), bins=np.asarray(edges))
    n = len(counts)
    left, right, top, bottom = 40, 10, 18, 38
    pw, ph = width - left - right, height - top - bottom
    peak = max(int(counts.max()) if n else 0, 1)
    bw = pw / max(n, 1)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(xlabel)} histogram">',
             f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#889"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#889"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak}</text>',
             f'<text x="{left - 6}" y="{top + ph}" text-anchor="end">0</text>']
    for i, c in enumerate(counts):
        h = ph * int(c) / peak
        x = left + i * bw
        parts.append(f'<rect x="{x + 2:.1f}" y="{top + ph - h:.1f}" width="{max(bw - 4, 1):.1f}" '
                     f'height="{h:.1f}" fill="#3b6fd4"/>')
        if c:
            parts.append(f'<text class="count" x="{x + bw / 2:.1f}" y="{top + ph - h - 3:.1f}" '
                         f'text-anchor="middle">{int(c)}</text>')
        lab = labels[i] if labels is not None else f"{edges[i]:.1f}"
        parts.append(f'<text x="{x + (bw / 2 if labels is not None else 0):.1f}" y="{top + ph + 14}" '
                     f'text-anchor="middle">{esc(lab)}</text>')
    if labels is None:
        parts.append(f'<text x="{left + pw:.1f}" y="{top + ph + 14}" text-anchor="middle">'
                     f"{edges[-1]:.1f}</text>")
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle">'
                 f"{esc(xlabel)}</text></svg>")
    return "".join(parts)


def _metric_line(r: dict[str, Any]) -> str:
    m = r.get("metrics") or {}
    if "ns_score" in m:
        return (f'<div class="metric">N-S score {float(m["ns_score"]):.3f} <small>/ 4 '
                "(mean number of the query's group in its top 4, itself included)</small></div>")
    if "map" in m:
        return (f'<div class="metric">mAP {float(m["map"]):.4f} <small>INRIA protocol; '
                f'mAP@10 {float(m.get("map_at_10", 0.0)):.4f} (sim-bench)</small></div>')
    return '<div class="metric">no metric</div>'


def _histogram(r: dict[str, Any], scores: Sequence[float]) -> str:
    if "ns_score" in (r.get("metrics") or {}):
        return svg_histogram(scores, [-0.5, 0.5, 1.5, 2.5, 3.5, 4.5],
                             labels=["0", "1", "2", "3", "4"],
                             xlabel="queries by number of correct results in the top 4")
    return svg_histogram(scores, [i / 10 for i in range(11)],
                         xlabel="queries by average precision (INRIA)")


def eval_report(r: dict[str, Any], *, max_rows: int = EVAL_MAX_ROWS, query_side: int = QUERY_SIDE,
                hit_side: int = HIT_SIDE) -> str:
    """The HTML page for an ``evaluate(..., detail=True)`` result: worst queries first."""
    per = r.get("per_query")
    if per is None:
        raise ReportError("the evaluation has no per-query detail (evaluate(..., detail=True))")
    ukbench = "ns_score" in (r.get("metrics") or {})
    thumbs = Thumbnails()
    order = sorted(range(len(per)), key=lambda i: (float(per[i]["score"]), i))
    shown = order[:max_rows] if max_rows > 0 else order
    thumbs.prefetch([(str(per[i]["query"]), query_side) for i in shown]
                    + [(str(h["path"]), hit_side) for i in shown for h in per[i].get("hits") or []])
    scores = [float(q["score"]) for q in per]
    root = str(r.get("root") or "")
    body = [
        f"<header><h1>simx eval: {esc(r.get('dataset', '?'))}</h1>",
        _metric_line(r),
        meta_list([
            ("model", r.get("model")),
            ("weights", r.get("weights")),
            ("model file", r.get("model_path")),
            ("providers", ", ".join(map(str, r.get("providers") or [])) or None),
            ("dataset root", r.get("root")),
            ("images / groups / queries", f"{r.get('images')} / {r.get('groups')} / {r.get('queries')}"),
            ("cache", r.get("cache")),
            ("previews missing", thumbs.failed or None),
            ("generated", f"{_now()} by simx {__version__}"),
        ]),
        "</header>",
        random_banner(r.get("weights")),
        '<header><h2>Per-query scores</h2>', _histogram(r, scores), "</header>",
        f'<p class="note">Worst first: {len(shown)} of {len(per)} queries shown. '
        "Green solid border: same group as the query (correct); red dashed: another group."
        + (" UKBench counts the query itself among its top 4." if ukbench else
           " The query itself is left out of its ranking.") + "</p>",
    ]
    for i in shown:
        q = per[i]
        score = (f'{int(q["score"])} / 4' if ukbench else f'AP {float(q["score"]):.3f}')
        n_pos = int(q.get("positives", 0))
        extra = "" if ukbench else (f' <span class="note">AP@10 {float(q.get("ap_at_10", 0.0)):.3f},'
                                    f' {n_pos} positive{"" if n_pos == 1 else "s"}</span>')
        cap = (f'<span class="qscore">{esc(score)}</span>{extra}'
               f'<span class="path">group {esc(q.get("group"))}: {esc(_under(q["query"], root))}</span>')
        head = figure(thumbs.get(str(q["query"]), query_side), cap, alt="query", title=str(q["query"]))
        items = "".join(
            "<li>" + figure(thumbs.get(str(h["path"]), hit_side),
                            _hit_caption(int(h["rank"]), h.get("score"), _under(h["path"], root),
                                         "\u2713" if h["correct"] else "\u2717"),
                            cls="ok" if h["correct"] else "bad", alt=f"result {h['rank']}",
                            title=str(h["path"])) + "</li>"
            for h in q.get("hits") or [])
        body.append(f'<section class="q">{head}<ol class="hits">{items}</ol></section>\n')
    return page(f"simx eval: {r.get('dataset', '?')} with {r.get('model', '?')}", body)


def write_eval_report(path: str | os.PathLike[str], result: dict[str, Any], **kw: Any) -> Path:
    return write_page(path, eval_report(result, **kw))
