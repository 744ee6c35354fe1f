"""HTML pages of the web view, rendered on the server: semantic tables, an inline SVG loss curve, no framework.

Everything shown comes from users or models (run names, messages, generated answers), so every value goes through
`escape`; the pages work without JavaScript, and a few lines of it refresh an active run's page in place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from urllib.parse import quote

from kubetune.progress_view import format_duration, format_size
from kubetune.webview.model import EventRow, FileRow, GateReport, LossHistory, LossPoint, RunPage, RunSummary

REFRESH_MS = 5000
CHART_WIDTH, CHART_HEIGHT = 640, 260
CHART_MARGIN = (16, 16, 36, 56)  # top, right, bottom, left: room for the axis labels

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#fff}
header,main,footer{max-width:1100px;margin:0 auto;padding:0 16px}
header{border-bottom:1px solid #d0d7de;padding-top:8px;padding-bottom:8px}
table{border-collapse:collapse;width:100%;margin:8px 0 20px}
caption{text-align:left;font-weight:600;padding:4px 0}
th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:12px;word-break:break-all}
.phase{font-weight:600}.Succeeded,.Cached,.pass{color:#116329}.Failed,.fail{color:#a40e26}.Running{color:#0550ae}
dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 16px}dt{font-weight:600}
.problem{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px}
svg text{font-size:11px;fill:#57606a}
a{color:#0550ae}
.skip{position:absolute;left:-999px}.skip:focus{left:8px;top:8px;background:#fff;padding:4px}
"""

REFRESH_SCRIPT = f"""
(function(){{
  // Progressive enhancement: an active run's page replaces its main content with a fresh copy.
  function refresh(){{
    if(document.body.dataset.active!=="true")return;
    fetch(location.href,{{headers:{{"Accept":"text/html"}}}}).then(function(r){{return r.ok?r.text():null;}})
    .then(function(text){{
      if(text===null)return;
      var fresh=new DOMParser().parseFromString(text,"text/html");
      document.getElementById("main").innerHTML=fresh.getElementById("main").innerHTML;
      document.body.dataset.active=fresh.body.dataset.active;
    }}).catch(function(){{}});
  }}
  setInterval(refresh,{REFRESH_MS});
}})();
"""


def page(title: str, body: str, *, active: bool = False) -> str:
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
        f"<title>{escape(title)} · kubetune</title><style>{STYLE}</style></head>"
        f"<body data-active=\"{'true' if active else 'false'}\">"
        "<a class=\"skip\" href=\"#main\">Skip to content</a>"
        "<header><nav aria-label=\"Site\"><a href=\"/\">kubetune runs</a></nav></header>"
        f"<main id=\"main\">{body}</main>"
        "<footer><p><small>Read-only view.</small></p></footer>"
        f"<script>{REFRESH_SCRIPT}</script></body></html>\n"
    )


def run_url(namespace: str, name: str) -> str:
    return f"/runs/{quote(namespace, safe='')}/{quote(name, safe='')}"


def file_url(namespace: str, name: str, row: FileRow) -> str:
    return f"{run_url(namespace, name)}/files/{quote(row.stage, safe='')}/{quote(row.path, safe='/')}"


def _phase(phase: str) -> str:
    return f"<span class=\"phase {escape(phase)}\">{escape(phase or 'Unknown')}</span>"


def _table(caption: str, headers: Sequence[str], rows: Sequence[Sequence[str]], *, numeric: Sequence[int] = ()) -> str:
    """A table with a caption and column headers; cells are HTML already escaped by the caller."""
    head = "".join(f"<th scope=\"col\">{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td class=\"num\">{cell}</td>" if i in numeric else f"<td>{cell}</td>"
                         for i, cell in enumerate(row)) + "</tr>"
        for row in rows
    )
    return f"<table><caption>{escape(caption)}</caption><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def runs_page(runs: Sequence[RunSummary]) -> str:
    if not runs:
        body = ("<h1>Runs</h1><p>No runs yet. Start one with <code>kubetune run run.yaml</code> "
                "(or <code>kubectl apply -f run.yaml</code> on a cluster).</p>")
        return page("Runs", body)
    rows = [[f"<a href=\"{escape(run_url(r.namespace, r.name))}\">{escape(r.name)}</a>", escape(r.namespace),
             _phase(r.phase), escape(r.current_stage), escape(r.progress_text), escape(r.created)] for r in runs]
    table = _table(f"{len(runs)} run{'s' if len(runs) != 1 else ''}",
                   ["Run", "Namespace", "Phase", "Stage", "Progress", "Created"], rows)
    return page("Runs", f"<h1>Runs</h1>{table}", active=any(r.phase in ("Pending", "Queued", "Running") for r in runs))


def run_page(data: RunPage) -> str:
    run = data.summary
    overview = [("Phase", _phase(run.phase)), ("Stage", escape(run.current_stage)),
                ("Progress", escape(run.progress_text)), ("Created", escape(run.created))]
    if data.message:
        overview.append(("Message", escape(data.message)))
    parts = [f"<h1>{escape(run.name)} <small>in {escape(run.namespace)}</small></h1>"]
    parts += [f"<p class=\"problem\" role=\"status\">Could not read {escape(p)}</p>" for p in data.problems]
    parts.append("<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in overview) + "</dl>")
    parts.append(_stages_section(data))
    parts.append(_training_section(data))
    parts.append(_files_section(run, data.files))
    parts.append(_gate_section(data.gate))
    parts.append(_events_section(data.events))
    return page(run.name, "".join(parts), active=data.active)


def _stages_section(data: RunPage) -> str:
    rows = [[escape(s.name), _phase(s.phase), escape(s.job), str(s.attempts), escape(s.started), escape(s.finished),
             escape(s.message)] for s in data.stages]
    if not rows:
        return "<section aria-labelledby=\"stages\"><h2 id=\"stages\">Stages</h2><p>No stage has started.</p></section>"
    table = _table("Stages in order", ["Stage", "Phase", "Job", "Attempts", "Started", "Finished", "Message"], rows,
                   numeric=[3])
    return f"<section aria-labelledby=\"stages\"><h2 id=\"stages\">Stages</h2>{table}</section>"


def _training_section(data: RunPage) -> str:
    progress = data.training
    facts = []
    if "step" in progress:
        facts.append(("Step", f"{progress['step']} / {progress.get('totalSteps', '?')}"))
    for key, label in (("epoch", "Epoch"), ("loss", "Loss"), ("tokensPerSecond", "Tokens/s")):
        if isinstance(progress.get(key), (int, float)):
            facts.append((label, f"{progress[key]:.4g}"))
    eta = progress.get("etaSeconds")
    if isinstance(eta, (int, float)) and math.isfinite(eta) and data.active:
        facts.append(("ETA", format_duration(eta)))
    listing = "<dl>" + "".join(f"<dt>{k}</dt><dd>{escape(v)}</dd>" for k, v in facts) + "</dl>" if facts else ""
    return (f"<section aria-labelledby=\"training\"><h2 id=\"training\">Training</h2>{listing}"
            f"{loss_chart(data.loss)}</section>")


def _scale(value: float, low: float, high: float, start: float, end: float) -> float:
    return start if high == low else start + (value - low) * (end - start) / (high - low)


def loss_path(points: Sequence[LossPoint], steps: tuple[float, float], losses: tuple[float, float]) -> str:
    """SVG path data through `points` in the chart's plot area (steps left to right, higher loss higher up)."""
    top, right, bottom, left = CHART_MARGIN
    commands = []
    for i, point in enumerate(points):
        x = _scale(point.step, *steps, left, CHART_WIDTH - right)
        y = _scale(point.loss, *losses, CHART_HEIGHT - bottom, top)
        commands.append(f"{'M' if i == 0 else 'L'}{x:.1f},{y:.1f}")
    return " ".join(commands)


def loss_chart(history: LossHistory) -> str:
    if not history.train and not history.eval:
        return "<p>No loss recorded yet.</p>"
    every = history.train + history.eval
    steps = (min(p.step for p in every), max(p.step for p in every))
    low, high = min(p.loss for p in every), max(p.loss for p in every)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    losses = (low - pad, high + pad)
    top, right, bottom, left = CHART_MARGIN
    high_y, low_y = (_scale(value, *losses, CHART_HEIGHT - bottom, top) for value in (high, low))
    described = [_describe("training loss", history.train), _describe("eval loss", history.eval)]
    parts = [
        (f"<svg role=\"img\" aria-labelledby=\"loss-title loss-desc\" viewBox=\"0 0 {CHART_WIDTH} {CHART_HEIGHT}\" "
         f"width=\"{CHART_WIDTH}\" height=\"{CHART_HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">"),
        "<title id=\"loss-title\">Loss by training step</title>",
        f"<desc id=\"loss-desc\">{escape(' '.join(d for d in described if d))}</desc>",
        (f"<rect x=\"{left}\" y=\"{top}\" width=\"{CHART_WIDTH - left - right}\" "
         f"height=\"{CHART_HEIGHT - top - bottom}\" fill=\"#f6f8fa\" stroke=\"#d0d7de\"/>"),
        f"<text x=\"{left}\" y=\"{CHART_HEIGHT - 20}\">{steps[0]:g}</text>",
        f"<text x=\"{CHART_WIDTH - right}\" y=\"{CHART_HEIGHT - 20}\" text-anchor=\"end\">{steps[1]:g}</text>",
        f"<text x=\"{(CHART_WIDTH + left) // 2}\" y=\"{CHART_HEIGHT - 4}\" text-anchor=\"middle\">step</text>",
        f"<text x=\"{left - 6}\" y=\"{high_y + 4:.1f}\" text-anchor=\"end\">{high:.3g}</text>",
        f"<text x=\"{left - 6}\" y=\"{low_y + 4:.1f}\" text-anchor=\"end\">{low:.3g}</text>",
        (f"<text x=\"12\" y=\"{(top + CHART_HEIGHT - bottom) / 2:.1f}\" text-anchor=\"middle\" "
        f"transform=\"rotate(-90 12 {(top + CHART_HEIGHT - bottom) / 2:.1f})\">loss</text>"),
    ]
    if history.train:
        parts.append(f"<path class=\"train-loss\" d=\"{loss_path(history.train, steps, losses)}\" fill=\"none\" "
                     "stroke=\"#0969da\" stroke-width=\"2\"/>")
    if history.eval:
        parts.append(f"<path class=\"eval-loss\" d=\"{loss_path(history.eval, steps, losses)}\" fill=\"none\" "
                     "stroke=\"#bc4c00\" stroke-width=\"2\" stroke-dasharray=\"6 4\"/>")
    parts.append("</svg>")
    legend = ["<span style=\"color:#0969da\">━ training loss</span>"] if history.train else []
    legend += ["<span style=\"color:#bc4c00\">╍ eval loss</span>"] if history.eval else []
    return "<figure>" + "".join(parts) + f"<figcaption>{' · '.join(legend)}</figcaption></figure>"


def _describe(what: str, points: Sequence[LossPoint]) -> str:
    if not points:
        return ""
    return (f"{what}: {len(points)} points from step {points[0].step:g} to {points[-1].step:g}, "
            f"{points[0].loss:.4g} at first, {points[-1].loss:.4g} last.")


def _files_section(run: RunSummary, files: Sequence[FileRow]) -> str:
    if not files:
        return ("<section aria-labelledby=\"artifacts\"><h2 id=\"artifacts\">Artifacts</h2>"
                "<p>No stage has published its output yet.</p></section>")
    rows = [[escape(f.stage),
             f"<a href=\"{escape(file_url(run.namespace, run.name, f))}\" download>{escape(f.path)}</a>",
             escape(format_size(f.size)), f"<code>{escape(f.sha256)}</code>"] for f in files]
    table = _table("Files each stage published (download verifies the sha256)", ["Stage", "File", "Size", "SHA-256"],
                   rows, numeric=[2])
    return f"<section aria-labelledby=\"artifacts\"><h2 id=\"artifacts\">Artifacts</h2>{table}</section>"


def _gate_section(reports: Sequence[GateReport]) -> str:
    if not reports:
        return ("<section aria-labelledby=\"gate\"><h2 id=\"gate\">Evaluation gate</h2>"
                "<p>The evaluate stage has not answered yet.</p></section>")
    parts = []
    for report in reports:
        facts = f"{report.pass_rate:.0%} of prompts passed"
        if report.top1_agreement is not None:
            facts += f", top-1 agreement with the merged model {report.top1_agreement:.1%}"
        if report.mean_kl is not None:
            facts += f", mean KL {report.mean_kl:.4f}"
        rows = [[escape(p.prompt), escape(p.answer),
                 f"<span class=\"{'pass' if p.passed else 'fail'}\">{'pass' if p.passed else 'fail'}</span>",
                 escape(p.reason)] for p in report.prompts]
        parts.append(f"<h3>{escape(report.file)}</h3><p>{escape(facts)}</p>"
                     + _table(f"Answers of {report.file}", ["Prompt", "Answer", "Result", "Why"], rows))
    return "<section aria-labelledby=\"gate\"><h2 id=\"gate\">Evaluation gate</h2>" + "".join(parts) + "</section>"


def _events_section(events: Sequence[EventRow]) -> str:
    if not events:
        return "<section aria-labelledby=\"events\"><h2 id=\"events\">Events</h2><p>No events.</p></section>"
    rows = [[escape(e.time), escape(e.type), escape(e.reason), escape(e.message)] for e in events]
    table = _table("Events, oldest first", ["Time", "Type", "Reason", "Message"], rows)
    return f"<section aria-labelledby=\"events\"><h2 id=\"events\">Events</h2>{table}</section>"


def error_page(status: int, message: str) -> str:
    return page(str(status), f"<h1>{status}</h1><p>{escape(message)}</p><p><a href=\"/\">All runs</a></p>")
