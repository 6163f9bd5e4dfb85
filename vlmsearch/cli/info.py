"""``vlmsearch info``: describe a collection or an ASIF anchor set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from vlmsearch.cli import output
from vlmsearch.cli.errors import user_errors
from vlmsearch.cli.options import CollectionOpt, JsonOpt


@user_errors
def info(
    path: Annotated[
        Path | None, typer.Argument(help="A collection or an ASIF anchor set (else -c).")
    ] = None,
    collection: CollectionOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Describe a collection (model, counts, index, sizes on disk) or an ASIF anchor set."""
    from vlmsearch.models.asif.anchors import AnchorSet, is_anchor_set

    target = path or collection
    if target is not None and is_anchor_set(target):
        data = AnchorSet.open(target).info()
        if json_:
            output.emit_json(data)
        else:
            output.mapping(data)
        return
    from vlmsearch.collection import Collection

    if (
        path is not None
        and not (path / "manifest.json").is_file()
        and (path / ".vlmsearch" / "manifest.json").is_file()
    ):
        path = path / ".vlmsearch"
    data = Collection.open(target if path is None else path).info()
    if json_:
        output.emit_json(data)
    else:
        output.mapping(_for_people(data))


def _for_people(data: dict[str, Any]) -> dict[str, Any]:
    """A collection's info as a table shows it: the model by name, a model substitution
    spelled out, embedded text columns summed up, no preprocessing details."""
    enc = data.pop("encoder") or {}
    data["model"] = enc.get("name")
    if enc.get("kind") == "asif":
        data["anchors"] = (enc.get("anchors") or {}).get("path")
    if enc.get("sha256"):
        data["model sha256"] = enc["sha256"]
    data["scores"] = _scores_line(enc, data.pop("calibration", None))
    choice = data.pop("encoder_choice", None) or {}
    if choice.get("requested") != choice.get("used"):
        data["model choice"] = f"{choice.get('used')} instead of {choice.get('requested')}: " + str(
            choice.get("reason")
        )
    data.pop("preprocessing", None)
    ran = data.pop("encoded_by", None) or {}
    if ran.get("engine"):
        data["precision"] = f"{data.get('precision')} (last run: {ran['engine']})"
    tv = data.pop("text_vectors", None) or {}
    if tv:
        data["embedded text"] = ", ".join(f"{c} ({e['rows']} rows)" for c, e in tv.items())
    return data


def _scores_line(encoder: dict[str, Any], own: dict[str, Any] | None) -> str:
    """What a text search's score is: calibrated (and from where), or the raw similarity."""
    from vlmsearch.search import calibration

    cal = calibration.active({"encoder": encoder, "calibration": own})
    if cal is None:
        return "raw similarity (calibrate: vlmsearch eval retrieval --captions FILE --calibrate)"
    where = (
        f"fitted on {cal['fitted_on'].get('captions')}"
        if isinstance(cal.get("fitted_on"), dict)
        else "shipped with the model"
    )
    return f"calibrated, 0-1 chance of a match ({where}; a={cal['a']:.4g}, b={cal['b']:.4g})"
