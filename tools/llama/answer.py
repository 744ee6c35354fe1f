"""`python -m kubetune.llama.answer`: one chat answer from a GGUF in llama.cpp, in a process of its own.

The request is one JSON object on stdin (gguf, prompt, chat template, stop sequences, max tokens); the reply is one
line on stdout, `REPLY_PREFIX` + {"answer": …} or {"error": …}, among whatever else llama.cpp prints. A caller that
runs this as a child survives a file that makes llama.cpp abort or segfault, and reads llama.cpp's log (verbose, on
stderr) for why a file was refused. Only llama.cpp and this package's chat helpers are imported: it starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPLY_PREFIX = "kubetune-answer: "
N_CTX = 2048


def answer_one_request() -> int:
    from .checks import generate_chat, load

    request: dict[str, Any] = json.load(sys.stdin)
    gguf = request["gguf"]
    try:
        llm = load(Path(gguf), n_ctx=N_CTX, verbose=True)
    except (ValueError, RuntimeError, OSError) as exc:  # llama-cpp-python's ValueError: llama.cpp refused the file
        return _reply(error=f"{gguf}: llama.cpp cannot load this file ({exc})")
    try:
        messages = [{"role": "user", "content": request["prompt"]}]
        answer = generate_chat(llm, messages, request["template"], stop=request["stop"],
                               max_tokens=request["max_tokens"]).strip()
    except Exception as exc:  # noqa: BLE001 - a model that loads but cannot run (hostile vocabulary or weights)
        return _reply(error=f"{gguf}: llama.cpp failed while answering: {type(exc).__name__}: {exc}")
    finally:
        llm.close()
    return _reply(answer=answer)


def _reply(**reply: str) -> int:
    sys.stdout.write(REPLY_PREFIX + json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 0 if "answer" in reply else 2


if __name__ == "__main__":
    sys.exit(answer_one_request())
