"""Write environment.yml from requirements.lock (run by `make lock`; a test checks they agree)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uniq.environment_lock import REPO_ROOT, environment_yml  # noqa: E402

if __name__ == "__main__":
    target = REPO_ROOT / "environment.yml"
    target.write_text(environment_yml())
    print(f"wrote {target}")
