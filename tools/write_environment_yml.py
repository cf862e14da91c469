"""Write environment.yml from requirements.lock (run by `make lock`; a test checks they agree)."""

from environment_lock import REPO_ROOT, environment_yml  # tools/ is on sys.path when run

if __name__ == "__main__":
    target = REPO_ROOT / "environment.yml"
    target.write_text(environment_yml())
    print(f"wrote {target}")
