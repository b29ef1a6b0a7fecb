"""``simx search`` (nearest cached images to a query) and ``simx eval`` (retrieval quality)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from simx.cli import params


def _print_hits(results: list[dict[str, Any]]) -> None:
    for res in results:
        click.echo(f"{res['kind']} query: {res['query']}")
        for h in res["hits"]:
            click.echo(f"  {h['rank']:>3}  {h['score']:.4f}  {h['path']}")


@click.command("search")
@click.argument("queries", nargs=-1, type=click.Path(path_type=Path))
@click.option("--cache", "cache_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A feature cache filled by `simx embed`.")
@click.option("--text", "texts", multiple=True, help="A text query (needs the model's -text.onnx); repeatable.")
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True, help="Results per query.")
@click.option("--index", type=click.Choice(["exact", "faiss"]), default="exact", show_default=True,
              help="exact: numpy cosine; faiss: a FAISS index saved next to the cache (simx-embed[faiss]).")
@click.option("--model", "-m", default=None,
              help="The model that filled the cache, when cache.json's id is not in $SIMX_MODELS_DIR.")
@params.provider_option()
@params.json_flag("Print results as JSON.")
@params.html_option("Also write a self-contained HTML page with thumbnails of every result.")
def search_cmd(queries: tuple[Path, ...], cache_dir: Path, texts: tuple[str, ...], k: int,
               index: str, model: str | None, provider: str, as_json: bool,
               html_path: Path | None) -> None:
    """Find the K most similar cached images to each QUERY image or --text (cosine)."""
    from simx.retrieval.search import search_cache

    params.check_html_output(html_path)
    results = search_cache(cache_dir, [str(q) for q in queries], list(texts), k=k, index=index,
                           model=model, provider=provider)
    if html_path is not None:
        from simx.report.html import write_search_report

        write_search_report(html_path, results, cache_dir, k=k, index=index, model=model)
        click.echo(f"wrote {html_path}", err=True)
    if as_json:
        click.echo(json.dumps(results, indent=2, ensure_ascii=False))
        return
    _print_hits(results)


def _eval_line(dataset: str, r: dict[str, Any]) -> str:
    """The one-line summary of an evaluation."""
    m = r["metrics"]
    score = (f"N-S score {m['ns_score']:.3f} / 4" if dataset == "ukbench"
             else f"mAP {m['map']:.4f}, mAP@10 {m['map_at_10']:.4f}")
    return (f"{r['dataset']} ({r['images']} images, {r['queries']} queries) with {r['model']} "
            f"[{r['weights']}]: {score}; embedded {r['embedded']}, reused {r['reused']}")


@click.command("eval")
@click.option("--dataset", type=click.Choice(["ukbench", "holidays"]), required=True)
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The unpacked dataset (ukbench*.jpg, or Holidays' 100000.jpg..., or their full/ jpg/).")
@click.option("--model", "-m", required=True, help="An .onnx file, or a model id in $SIMX_MODELS_DIR.")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False, path_type=Path),
              help="Feature cache for this dataset [default: $SIMX_CACHE_DIR or ~/.cache/simx].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@params.threads_option()
@params.provider_option()
@params.json_flag("Print the result as JSON.")
@params.html_option("Also write an HTML page: the metric, a histogram, and the worst queries' results.")
@click.option("--html-rows", type=click.IntRange(min=0), default=200, show_default=True,
              help="Queries shown in the --html page, worst first (0: all).")
def eval_cmd(dataset: str, root: Path, model: str, cache_dir: Path | None, batch_size: int | None,
             threads: int | None, provider: str, as_json: bool, html_path: Path | None,
             html_rows: int) -> None:
    """Retrieval quality: UKBench N-S score, or Holidays mAP (INRIA protocol) and mAP@10."""
    from simx.retrieval.evaluate import evaluate

    params.check_html_output(html_path)
    r = evaluate(dataset, root, model, cache_dir=cache_dir, batch_size=batch_size,
                 provider=provider, threads=threads, detail=html_path is not None)
    if html_path is not None:
        from simx.report.html import write_eval_report

        write_eval_report(html_path, r, max_rows=html_rows)
        click.echo(f"wrote {html_path}", err=True)
        r.pop("per_query", None)
    if as_json:
        click.echo(json.dumps(r, indent=2))
        return
    click.echo(_eval_line(dataset, r))
