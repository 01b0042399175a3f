"""Planting canaries in one client's private data at set-up, for the audits of a finished run.

The configuration ``audit.canaries`` (:class:`privsem.config.CanaryConfig`) names the client,
how many canaries, and the secret format. At set-up :func:`plant_for_run` draws the canaries and
the auditor's inclusion secret (each canary included independently with probability ½, as the
one-run audit of :mod:`privsem.audits.one_run` requires) from the run's
:class:`~privsem.rng.Randomness` under the label ``("audit", "canaries")``, appends the member
canaries to that client's private training data *before the privacy plan is made* (so DP-SGD's
N, its sampling rate q = B/N and its noise are those of the data the client actually trains
on), and writes every canary with the inclusion secret to ``RUN_DIR/audit/canaries.json``.

That file is the auditor's, not the federation's: nothing in the protocol reads or sends it. In
a simulation it sits in the run folder for convenience; in a deployment the auditor plants the
canaries on the client and keeps the file away from the server (whoever holds it knows which
canaries were trained on, which is exactly what the audit measures).

Rules for changing it: the canaries' texts are built only by
:class:`~privsem.audits.canaries.CanaryFormat` (via :func:`canary_format`), so training, scoring
and the verbatim check see the same strings; a resumed run reads the file back instead of
drawing again (with OS randomness a second draw would differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from privsem import bounded_json
from privsem.audits.canaries import Canary, CanaryFormat, plant_canaries
from privsem.config import CanaryConfig, RunConfig
from privsem.data import Example
from privsem.errors import DataError
from privsem.rng import make_randomness

CANARIES_FILE = "canaries.json"
AUDIT_DIR = "audit"
# canaries.json holds the planted records (one entry per canary): far below this
MAX_CANARY_FILE_BYTES = 64 * 1024 * 1024

# The fixed vocabulary of ``format: words`` secrets: 100 distinct, common, lower-case English
# words, so |R| = 100^length (config.CANARY_LENGTHS keeps length in [2, 7]).
WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "tiger", "piano", "garden", "silver", "orange", "window",
    "candle", "forest", "rocket", "pencil", "yellow", "castle", "butter", "mirror", "planet",
    "summer", "winter", "bridge", "button", "carpet", "dragon", "engine", "finger", "guitar",
    "hammer", "island", "jacket", "kitten", "ladder", "marble", "needle", "oyster", "pepper",
    "rabbit", "saddle", "tomato", "violin", "walnut", "anchor", "basket", "cherry", "donkey",
    "feather", "glacier", "harbor", "jungle", "lemon", "meadow", "nutmeg", "olive", "parrot",
    "quartz", "ribbon", "salmon", "tunnel", "velvet", "wagon", "zebra", "acorn", "bamboo",
    "cactus", "dolphin", "falcon", "ginger", "helmet", "iguana", "jigsaw", "kettle", "lantern",
    "magnet", "napkin", "orchid", "pillow", "radish", "sponge", "thimble", "umbrella", "vessel",
    "whistle", "yogurt", "almond", "beacon", "copper", "desert", "emerald", "fossil", "goblet",
    "hazel", "ivory", "jasmine", "kernel", "lobster", "mango", "nickel", "otter", "pebble")


def canary_format(cfg: CanaryConfig) -> CanaryFormat:
    """The secret format ``cfg`` names: ``digits`` ("My account PIN is 123456.") or ``words``
    ("The secret phrase is apple river stone cloud.")."""
    if cfg.format == "digits":
        return CanaryFormat.digits(cfg.length)
    return CanaryFormat.words(WORDS, cfg.length)


@dataclass(frozen=True)
class PlantedCanaries:
    """The canaries of a run and the auditor's secret inclusion vector."""

    client: str
    fmt: CanaryFormat
    canaries: tuple[Canary, ...]
    included: np.ndarray  # (m,) bool: canary i was added to the client's training data

    @property
    def members(self) -> list[Example]:
        return [c.example for c, inc in zip(self.canaries, self.included, strict=True) if inc]

    def to_json(self) -> dict[str, Any]:
        return {
            "about": ("The auditor's secret: which canaries were added to the client's training "
                      "data. Never sent by the protocol; in a deployment the auditor keeps this "
                      "file away from the server."),
            "client": self.client,
            "format": {"template": self.fmt.template, "prompt": self.fmt.prompt,
                       "alphabet": list(self.fmt.alphabet), "length": self.fmt.length,
                       "separator": self.fmt.separator, "space_size": self.fmt.space_size},
            "count": len(self.canaries), "members": int(self.included.sum()),
            "canaries": [{**c.to_json(), "included": bool(inc)}
                         for c, inc in zip(self.canaries, self.included, strict=True)]}

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = CANARIES_FILE) -> PlantedCanaries:
        """Reads :meth:`to_json` back; every canary's text is re-rendered from its secret and
        must match, so a hand-edited file cannot make the audit score other strings."""
        try:
            f = data["format"]
            fmt = CanaryFormat(template=str(f["template"]), alphabet=tuple(f["alphabet"]),
                               length=int(f["length"]), separator=str(f["separator"]),
                               prompt=str(f["prompt"]))
            canaries, included = [], []
            for i, c in enumerate(data["canaries"]):
                secret, idx = str(c["secret"]), int(c["secret_index"])
                if fmt.secret_of(idx) != secret or fmt.render(secret) != c["text"] or int(
                        c["index"]) != i:
                    raise DataError(path, None, f"canary {i} does not match its format (secret "
                                    f"{secret!r}); the file was edited or damaged")
                canaries.append(Canary(index=i, secret_index=idx, secret=secret,
                                       text=fmt.render(secret), example=fmt.example(secret)))
                included.append(bool(c["included"]))
            client = str(data["client"])
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(path, None, f"not a canaries file written by privsem ({e!r})"
                            ) from None
        if len(canaries) < 2:
            raise DataError(path, None, "holds fewer than 2 canaries")
        return cls(client=client, fmt=fmt, canaries=tuple(canaries),
                   included=np.asarray(included, dtype=bool))


def canaries_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / AUDIT_DIR / CANARIES_FILE


def load_planted(run_dir: str | Path) -> PlantedCanaries:
    """The canaries planted in the run at ``run_dir``; DataError if it planted none."""
    path = canaries_path(run_dir)
    if not path.is_file():
        raise DataError(str(path), None, "missing: this run planted no canaries; set "
                        "audit.canaries (e.g. --set audit.canaries.client=alice) and run again")
    try:
        data = bounded_json.read_file(path, max_bytes=MAX_CANARY_FILE_BYTES, max_depth=16)
    except (OSError, ValueError) as e:
        raise DataError(str(path), None, f"cannot be read ({e})") from None
    if not isinstance(data, dict):
        raise DataError(str(path), None, "expected a JSON object")
    return PlantedCanaries.from_json(data, str(path))


def draw(cfg: RunConfig) -> PlantedCanaries | None:
    """The canaries ``cfg.audit.canaries`` asks for, from the run's randomness (seeded runs
    draw the same canaries every time); None when none are configured."""
    cc = cfg.audit.canaries
    if cc is None:
        return None
    fmt = canary_format(cc)
    randomness = make_randomness(cfg.privacy.randomness, cfg.seed, "audit", "canaries")
    canaries, included = plant_canaries(fmt, cc.count, randomness)
    return PlantedCanaries(client=cc.client, fmt=fmt, canaries=tuple(canaries),
                           included=included)


def plant_for_run(cfg: RunConfig, out: Path, private: dict[str, list[Example]], *,
                  resumes: int = 0) -> PlantedCanaries | None:
    """At set-up: draws the canaries (or, when resuming, reads them back from the run folder),
    writes ``out/audit/canaries.json`` on a fresh run, and returns the private data with the
    member canaries appended to the configured client's examples (``private`` is updated in
    place). None, and ``private`` untouched, when no canaries are configured."""
    from privsem.protocol.state import write_json

    cc = cfg.audit.canaries
    if cc is None:
        return None
    if cc.client not in private:
        raise DataError(cc.client, None, "audit.canaries.client is not a client of this run")
    path = canaries_path(out)
    if resumes > 0 and path.is_file():
        planted = load_planted(out)
        if planted.client != cc.client or len(planted.canaries) != cc.count:
            raise DataError(str(path), None, f"holds {len(planted.canaries)} canaries for "
                            f"{planted.client!r}, but the configuration asks for {cc.count} for "
                            f"{cc.client!r}; the run folder does not belong to this "
                            "configuration")
    else:
        drawn = draw(cfg)
        if drawn is None:  # unreachable: cc is not None
            return None
        planted = drawn
        write_json(path, planted.to_json())
    private[cc.client] = [*private[cc.client], *planted.members]
    return planted
