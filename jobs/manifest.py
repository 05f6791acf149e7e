"""`runs/<name>/manifest.json`: the format and its `Manifest` live with the run-folder readers in
actors/common/runs.py (one place per format); the job drivers write through it from here."""
from actors.common.runs import Manifest, fingerprint

__all__ = ["Manifest", "fingerprint"]
