"""Where the repository and the shared reference material lie, for tests in any folder."""
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
