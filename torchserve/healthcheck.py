"""Container healthcheck: TorchServe answers /ping, which in 0.12 needs the inference token too.

Run in TorchServe's working directory (where it writes key_file.json):
    python healthcheck.py [http://127.0.0.1:8080]
Exit status 0 when healthy, 1 otherwise.
"""

import json
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    base = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
    try:
        key = json.loads(Path("key_file.json").read_text())["inference"]["key"]
        request = urllib.request.Request(f"{base}/ping", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(request, timeout=5) as response:
            healthy = json.loads(response.read()).get("status") == "Healthy"
    except (OSError, KeyError, ValueError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
