"""Time `load_dir` on a conf.d of N route files (default 1,000).

Usage: ``python bench/bench_config_load.py [N] [ROUNDS]``. Prints the best and median wall time
of ROUNDS cold-ish loads (files are in the page cache after the first round, as on a reload).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

from aigw.config import load_dir

TEMPLATE = """\
# Route {i}: a typical file, comments included.
route:
  name: azure-deployment-{i}
  paths: [/openai/deployments/deployment-{i}/chat/completions]
  methods: [POST]
plugins:
  - name: ai-proxy-advanced
    config:
      response_streaming: allow
      targets:
        - route_type: llm/v1/chat
          read_timeout: 120000
          auth:
            header_name: api-key
            header_value: ${{AZURE_OPENAI_KEY}}
          logging:
            log_statistics: true
          model:
            provider: azure
            name: deployment-{i}
            options:
              azure_instance: ${{AZURE_INSTANCE}}
              azure_deployment_id: deployment-{i}
              azure_api_version: "2024-10-21"
              temperature: 0.2
"""
ENV = {"AZURE_OPENAI_KEY": "k" * 32, "AZURE_INSTANCE": "myresource"}


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp)
        for i in range(count):
            (conf / f"route-{i:05}.yaml").write_text(TEMPLATE.format(i=i))
        times = []
        for _ in range(rounds):
            started = time.perf_counter()
            loaded = load_dir(conf, ENV)
            times.append(time.perf_counter() - started)
            assert len(loaded.accepted) == count and not loaded.rejected, loaded.rejected[:1]
    print(
        f"{count} files: best {min(times) * 1000:.0f} ms, median "
        f"{statistics.median(times) * 1000:.0f} ms, per file "
        f"{min(times) / count * 1e6:.0f} us (libyaml: {yaml.__with_libyaml__})"
    )


if __name__ == "__main__":
    main()
