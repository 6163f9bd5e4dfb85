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
    choice = data.pop("encoder_choice", None) or {}
    if choice.get("requested") != choice.get("used"):
        data["model choice"] = f"{choice.get('used')} instead of {choice.get('requested')}: " + str(
            choice.get("reason")
        )
    data.pop("preprocessing", None)
    tv = data.pop("text_vectors", None) or {}
    if tv:
        data["embedded text"] = ", ".join(f"{c} ({e['rows']} rows)" for c, e in tv.items())
    return data
