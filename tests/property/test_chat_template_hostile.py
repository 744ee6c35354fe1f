"""Hostile chat templates (`spec.training.chatTemplate.inline`): hypothesis assembles Jinja from fragments that loop,
grow strings, reach for attributes, recurse, raise and break the syntax. Checking one is either accepted or one
`ChatTemplateError` line naming the field: never another exception, never a hang (the render is CPU-time bounded)."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from kubetune.chat_templates import RENDER_SECONDS, ChatTemplateError, check_template

FIELD = "spec.training.chatTemplate.inline"
# A hang detector, not a speed test: every render of the probe conversation is bounded to RENDER_SECONDS of CPU, and
# checking renders it a handful of times.
MAX_CPU_SECONDS = 20 * RENDER_SECONDS

FRAGMENTS = [
    "{% for message in messages %}", "{% endfor %}", "{{ message['content'] }}", "{{ message['role'] }}",
    "{% if add_generation_prompt %}", "{% endif %}", "{% else %}", "<|im_start|>", "<|im_end|>", "\n",
    "{% for i in range(99999) %}", "{{ 'x' * 99999 }}", "{{ 'ab' ~ 'cd' }}", "{% set ns = namespace(x='a') %}",
    "{% set ns.x = ns.x ~ ns.x %}", "{% set ns.x = ns.x + ns.x %}", "{{ ns.x }}", "{{ ''.__class__ }}",
    "{{ messages.__class__.__mro__ }}", "{{ messages.pop() }}", "{{ raise_exception('no') }}",
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "{{ 10 ** 999 }}", "{{ 1 / 0 }}", "{{ '%99999s' % 'x' }}",
    "{{ 'x'|center(99999999) }}", "{{ '{:>{}}'.format('x', 99999999) }}", "{{ messages|tojson }}",
    "{{ strftime_now('%Y') }}", "{{ bos_token }}", "{{ undefined_name.attr }}", "{% break %}", "{% continue %}",
    "{{", "}}", "{%", "%}", "{#", "#}", "{% raw %}", "'", '"', "(", ")", "[", "]",
    "{% set loop = 1 %}", "{{ loop.index }}", "{{ range(5)|list|join(',') }}",
]


def checked(template: str) -> None:
    started = time.process_time()
    try:
        check_template(template, FIELD)
    except ChatTemplateError as error:
        message = str(error)
        assert message.startswith(f"{FIELD}: ") and "\n" not in message, message
    elapsed = time.process_time() - started
    assert elapsed < MAX_CPU_SECONDS, f"took {elapsed:.2f} CPU seconds"


@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=24))
def test_templates_assembled_from_hostile_fragments_end_as_one_error_line_or_pass(fragments: list[str]) -> None:
    checked("".join(fragments))


@given(st.text(max_size=300))
def test_arbitrary_text_as_a_template_ends_as_one_error_line_or_passes(text: str) -> None:
    checked(text)
