"""The stage Jobs (`python -m kubetune.jobs <stage>`) and the modules they run."""

import logging

# On CPUs with AVX512-BF16, importing bitsandbytes looks for an optional kernel from the Hugging Face hub and warns on
# every stage start when the `kernels` package is missing. Nothing here fetches code from a hub at run time, and
# bitsandbytes' own CPU kernel runs instead, so that warning would only alarm users.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
