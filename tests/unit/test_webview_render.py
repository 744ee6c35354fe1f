"""The web view's pages: every user or model text escaped, semantic tables, the loss curve drawn on the server,
and a sentence instead of an empty table."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from kubetune.webview import render
from kubetune.webview.model import (
    EventRow,
    FileRow,
    GateReport,
    LossHistory,
    LossPoint,
    PromptAnswer,
    RunPage,
    RunSummary,
    StageRow,
)

HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>\"'&"
SHA = "ab" * 32


class Elements(HTMLParser):
    """The start tags of a page, and its text: what a browser would build, minus the rendering."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def named(self, tag: str) -> list[dict[str, str | None]]:
        return [attrs for name, attrs in self.tags if name == tag]


def summary(name: str = "demo", phase: str = "Succeeded") -> RunSummary:
    return RunSummary("default", name, phase, "evaluate", "evaluate done", "2026-12-06T08:00:00Z")


def hostile_page() -> RunPage:
    return RunPage(
        summary=summary(),
        message=HOSTILE,
        stages=(StageRow("train", "Succeeded", "demo-train-1", 1, "t0", "t1", HOSTILE),),
        files=(FileRow("convert", f"model-{HOSTILE}.gguf", 1234, SHA),),
        events=(EventRow("2026-12-06T08:00:00Z", "Warning", "StageFailed", HOSTILE),),
        gate=(GateReport("model-q8_0.gguf", 0.5, None, None, (PromptAnswer(HOSTILE, HOSTILE, False, HOSTILE),)),),
    )


def test_user_and_model_text_is_shown_as_text_and_never_becomes_markup() -> None:
    html = render.run_page(hostile_page())
    parsed = Elements(html)
    assert [attrs for attrs in parsed.named("script") if attrs] == []  # only the page's own inline script
    assert len(parsed.named("script")) == 1
    assert parsed.named("img") == []
    assert sum(HOSTILE in text for text in parsed.text) >= 6  # message, stage, file, event, prompt, answer, reason


def test_the_runs_list_escapes_names_and_links_each_run_by_its_quoted_name() -> None:
    html = render.runs_page([summary(name="a b<c>")])
    links = [a["href"] for a in Elements(html).named("a")]
    assert "/runs/default/a%20b%3Cc%3E" in links
    assert "a b&lt;c&gt;" in html


def test_tables_have_captions_and_column_headers() -> None:
    html = render.run_page(hostile_page())
    assert html.count("<caption>") == html.count("<table>") == 4  # stages, artifacts, answers, events
    assert all(attrs.get("scope") == "col" for attrs in Elements(html).named("th"))


def test_the_artifacts_table_gives_size_full_digest_and_a_download_link_per_published_file() -> None:
    row = FileRow("convert", "gguf/model q8_0.gguf", 1_500_000, SHA)
    html = render.run_page(RunPage(summary=summary(), files=(row,)))
    link = next(a for a in Elements(html).named("a") if "download" in a)
    assert link["href"] == "/runs/default/demo/files/convert/gguf/model%20q8_0.gguf"
    assert "1.5 MB" in html
    assert f"<code>{SHA}</code>" in html


def test_the_loss_path_spans_the_plot_area_with_the_highest_loss_at_the_top() -> None:
    points = (LossPoint(0, 2.0), LossPoint(5, 1.5), LossPoint(10, 1.0))
    path = render.loss_path(points, (0.0, 10.0), (1.0, 2.0))
    top, right, bottom, left = render.CHART_MARGIN
    x_end, y_bottom = render.CHART_WIDTH - right, render.CHART_HEIGHT - bottom
    middle_x, middle_y = (left + x_end) / 2, (top + y_bottom) / 2
    assert path == f"M{left:.1f},{top:.1f} L{middle_x:.1f},{middle_y:.1f} L{x_end:.1f},{y_bottom:.1f}"


def test_the_loss_chart_is_an_image_with_a_text_description_for_screen_readers() -> None:
    history = LossHistory(train=(LossPoint(1, 3.25), LossPoint(2, 2.5)))
    html = render.loss_chart(history)
    svg = Elements(html).named("svg")[0]
    assert svg["role"] == "img" and svg["aria-labelledby"] == "loss-title loss-desc"
    assert "training loss: 2 points from step 1 to 2, 3.25 at first, 2.5 last." in html
    assert 'class="train-loss"' in html and 'class="eval-loss"' not in html


def test_eval_loss_is_drawn_as_its_own_dashed_line_when_the_run_has_it() -> None:
    history = LossHistory(train=(LossPoint(1, 3.0), LossPoint(4, 2.0)), eval=(LossPoint(2, 2.8), LossPoint(4, 2.4)))
    html = render.loss_chart(history)
    eval_path = re.search(r'class="eval-loss" d="([^"]+)"[^>]*stroke-dasharray', html)
    assert eval_path is not None and eval_path.group(1).startswith("M")
    assert "eval loss: 2 points" in html


def test_a_single_loss_point_still_draws_inside_the_plot() -> None:
    html = render.loss_chart(LossHistory(train=(LossPoint(3, 1.0),)))
    path = re.search(r'class="train-loss" d="M([\d.]+),([\d.]+)"', html)
    assert path is not None
    top, _, bottom, left = render.CHART_MARGIN
    assert float(path.group(1)) == left and top < float(path.group(2)) < render.CHART_HEIGHT - bottom


def test_empty_parts_say_so_in_a_sentence_instead_of_an_empty_table() -> None:
    html = render.run_page(RunPage(summary=summary(phase="Pending")))
    for sentence in ("No stage has started.", "No loss recorded yet.", "No stage has published its output yet.",
                     "The evaluate stage has not answered yet.", "No events."):
        assert sentence in html
    assert "<table>" not in html
    assert "No runs yet." in render.runs_page([])


def test_only_an_active_run_asks_the_page_script_to_refresh() -> None:
    assert 'data-active="true"' in render.run_page(RunPage(summary=summary(phase="Running")))
    assert 'data-active="false"' in render.run_page(RunPage(summary=summary(phase="Succeeded")))


def test_a_problem_reading_the_store_is_shown_on_the_page() -> None:
    html = render.run_page(RunPage(summary=summary(), problems=("the store s3://b: unreachable <x>",)))
    assert 'role="status">Could not read the store s3://b: unreachable &lt;x&gt;' in html
