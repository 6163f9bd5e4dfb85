"""clip-retrieval's back-end API on `vlmsearch serve`: /indices-list, /knn-service and
/metadata, against the native search, with the requests the real ClipClient sends."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from tests.conftest import make_images  # noqa: E402
from tests.serve_helpers import build_collection, live_server  # noqa: E402
from vlmsearch import Collection  # noqa: E402
from vlmsearch.ingest.options import IngestOptions  # noqa: E402
from vlmsearch.server.app import create_app  # noqa: E402
from vlmsearch.server.config import ServerConfig  # noqa: E402

DATA = Path(__file__).parent / "data" / "clip_client_requests.json"
WORDS = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory, tiny_encoder) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("clipback")
    photos = build_collection(base / "photos", tiny_encoder)
    coll = Collection.open(photos)
    coll.use_encoder(tiny_encoder)
    ids = coll.vectors.ids.tolist()
    coll._write_text_column("caption", {i: f"a {WORDS[i % 3]} square" for i in ids}, {})
    coll._write_text_column("url", {i: f"https://example.org/{i}.png" for i in ids}, {})
    # a collection holding one image twice, for deduplication
    root = base / "dups"
    first = make_images(root, 5)[0]
    shutil.copy(first, root / "copy-of-first.png")
    Collection.index(root, encoder=tiny_encoder, options=IngestOptions(workers=0))
    return {"photos": photos, "dups": root / ".vlmsearch"}


@pytest.fixture(scope="module")
def app(paths):
    return create_app(ServerConfig(collections=paths, max_k=50))


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)


def knn(client, **body):
    base = {"modality": "image", "num_images": 3, "indice_name": "photos"}
    return client.post("/knn-service", json={**base, **body})


def native(client, body, name="photos"):
    res = client.post(f"/api/collections/{name}/search", json=body)
    assert res.status_code == 200, res.text
    return res.json()["hits"]


def png(colour=(220, 30, 30), size=(48, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def assert_error(res, status: int, needle: str) -> None:
    assert res.status_code == status, res.text
    body = res.json()
    assert body["status"] == status and needle.lower() in body["error"].lower(), body


def assert_results(items, n: int) -> None:
    assert len(items) == n
    sims = [it["similarity"] for it in items]
    assert sims == sorted(sims, reverse=True)
    for it in items:
        assert isinstance(it["id"], int) and {"image_path", "caption", "url", "image"} <= set(it)
        assert not it["image_path"].startswith("/")  # no server paths
        assert Image.open(io.BytesIO(base64.b64decode(it["image"]))).format == "JPEG"


# -- the three endpoints -----------------------------------------------------------------------


def test_indices_list(client):
    res = client.get("/indices-list")
    assert res.status_code == 200 and res.json() == ["photos", "dups"]


def test_text_query_matches_native_search(client):
    res = knn(client, text="a red square", num_images=4)
    assert res.status_code == 200, res.text
    items = res.json()
    assert_results(items, 4)
    hits = native(client, {"text": "a red square", "k": 4})
    assert [it["id"] for it in items] == [h["id"] for h in hits]
    assert items[0]["similarity"] == pytest.approx(hits[0]["score"])
    assert items[0]["caption"] == hits[0]["caption"]


def test_text_with_a_colon_is_literal(client):
    # "2:red" would be a weighted term natively; clip-retrieval's text is plain text
    items = knn(client, text="2:red").json()
    hits = native(client, {"text": "1:2:red", "k": 3})
    assert [it["id"] for it in items] == [h["id"] for h in hits]


def test_image_query_matches_native_search(client):
    data = png()
    res = knn(client, image=base64.b64encode(data).decode(), num_images=5)
    assert res.status_code == 200, res.text
    items = res.json()
    assert_results(items, 5)
    up = client.post(
        "/api/collections/photos/search/image",
        files={"image": ("q.png", data, "image/png")},
        data={"query": json.dumps({"k": 5})},
    )
    assert up.status_code == 200, up.text
    assert [it["id"] for it in items] == [h["id"] for h in up.json()["hits"]]
    # a data: URL is the same image
    url = "data:image/png;base64," + base64.b64encode(data).decode()
    assert [it["id"] for it in knn(client, image_url=url, num_images=5).json()] == [
        it["id"] for it in items
    ]


def test_embedding_query_matches_native_search(client, paths, tiny_encoder):
    coll = Collection.open(paths["photos"])
    stored_id = int(coll.vectors.ids[3])
    vector = coll.vectors.dense(np.asarray([stored_id]))[0].astype(float)
    res = knn(client, embedding_input=vector.tolist(), num_images=3)
    assert res.status_code == 200, res.text
    items = res.json()
    assert_results(items, 3)
    assert items[0]["id"] == stored_id
    assert items[0]["similarity"] == pytest.approx(1.0, abs=1e-2)
    # the same top hit as the native "more like this" plus the image itself
    similar = client.get(f"/api/collections/photos/similar/{stored_id}?k=2").json()["hits"]
    assert items[1]["id"] == similar[0]["id"]


def test_text_modality_searches_captions(client):
    res = knn(client, text="a green square", modality="text", num_images=4)
    assert res.status_code == 200, res.text
    items = res.json()
    hits = native(
        client, {"text": "a green square", "k": 4, "text_column": "caption", "text_weight": 1.0}
    )
    assert [it["id"] for it in items] == [h["id"] for h in hits]
    assert items[0]["caption"] == "a green square"
    # a collection without captions has no text index
    assert_error(knn(client, text="x", modality="text", indice_name="dups"), 400, "caption")


def test_num_result_ids_returns_more_ids_without_metadata(client):
    # the front end's pattern: many ids, metadata for the first num_images, /metadata later
    items = knn(client, text="a blue square", num_images=2, num_result_ids=6).json()
    assert len(items) == 6
    assert all("caption" in it for it in items[:2])
    assert all(set(it) == {"id", "similarity"} for it in items[2:])
    # capped at the server's max_k
    assert len(knn(client, text="a blue square", num_images=2, num_result_ids=10**6).json()) == 12


def test_metadata_round_trips_ids(client):
    items = knn(client, text="a red square", num_images=4).json()
    ids = [it["id"] for it in items]
    res = client.post("/metadata", json={"indice_name": "photos", "ids": ids[::-1] + [10**12]})
    assert res.status_code == 200, res.text
    got = res.json()
    assert [g["id"] for g in got] == ids[::-1] + [10**12]
    by_id = {
        it["id"]: {k: v for k, v in it.items() if k not in ("id", "similarity")} for it in items
    }
    for g in got[:-1]:
        assert g["metadata"] == by_id[g["id"]]
    assert got[-1]["metadata"] == {}  # no such image
    assert client.post("/metadata", json={"indice_name": "photos", "ids": []}).json() == []


def test_deduplicate_drops_the_copy(client, paths):
    coll = Collection.open(paths["dups"])
    ids = coll.vectors.ids.tolist()
    first = next(i for i in ids if coll.rows([i])[i]["path"] == "img0000.png")
    copy = next(i for i in ids if "copy" in coll.rows([i])[i]["path"])
    vector = coll.vectors.dense(np.asarray([first]))[0].astype(float).tolist()
    body = {"embedding_input": vector, "indice_name": "dups", "num_images": 6}
    plain = knn(client, **body).json()
    assert {first, copy} <= {it["id"] for it in plain} and len(plain) == 6
    deduped = knn(client, **body, deduplicate=True).json()
    got = [it["id"] for it in deduped]
    assert len({first, copy} & set(got)) == 1  # one of the two, never both
    assert got[0] == plain[0]["id"]  # a group keeps its best-ranked member
    # clip_back's rule, worked out here: groups of results linked (at any remove) by a
    # cosine similarity above 0.94; the tiny random model links some distinct images too
    order = [it["id"] for it in plain]
    v = coll.vectors.dense(np.asarray(order)).astype(np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    linked = (v @ v.T) > 0.94
    kept, seen = [], set()
    for i in range(len(order)):
        if i in seen:
            continue
        kept.append(order[i])
        todo = [i]
        while todo:
            a = todo.pop()
            seen.add(a)
            todo += [b for b in np.nonzero(linked[a])[0].tolist() if b not in seen]
    assert got == kept


def test_options_without_models_are_accepted(client):
    ref = [it["id"] for it in knn(client, text="a red square").json()]
    res = knn(
        client,
        text="a red square",
        use_safety_model=True,
        use_violence_detector=True,
        aesthetic_score="",
        aesthetic_weight="0.5",
    )
    assert res.status_code == 200 and [it["id"] for it in res.json()] == ref
    assert_error(knn(client, text="a red square", use_mclip=True), 400, "mclip")


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"text": "red", "image": base64.b64encode(png()).decode()}, 400, "exactly one"),
        ({}, 400, "exactly one"),
        ({"text": ""}, 400, "exactly one"),
        ({"text": "red", "indice_name": "nope"}, 404, "nope"),
        ({"image": "not base64!!"}, 400, "base64"),
        ({"image": base64.b64encode(b"not an image").decode()}, 415, "image"),
        ({"image_url": "http://169.254.169.254/latest"}, 400, "does not fetch"),
        ({"image_url": "file:///etc/passwd"}, 400, "does not fetch"),
        ({"embedding_input": [1.0, 2.0]}, 400, "dim"),
        ({"embedding_input": [0.0] * 8}, 400, "non-zero"),
        ({"text": "red", "num_images": 51}, 422, "num_images"),
        ({"text": "red", "modality": "audio"}, 422, "modality"),
        ({"text": "red", "nprobe": 3}, 422, "nprobe"),
    ],
)
def test_bad_requests(client, body, status, needle):
    assert_error(knn(client, **body), status, needle)


def test_bad_metadata_requests(client):
    assert_error(client.post("/metadata", json={"indice_name": "x", "ids": [1]}), 404, "x")
    assert_error(client.post("/metadata", json={"indice_name": "photos", "ids": [-1]}), 422, "ids")
    many = {"indice_name": "photos", "ids": list(range(51))}
    assert_error(client.post("/metadata", json=many), 422, "at most 50")


def test_the_api_key_applies(paths):
    app = create_app(ServerConfig(collections=paths, api_key="sekrit"))
    c = TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)
    assert c.get("/indices-list").status_code == 401
    assert c.post("/knn-service", json={}).status_code == 401
    assert c.get("/indices-list", auth=("clip", "sekrit")).status_code == 200


# -- what ClipClient sends ---------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1])
def test_recorded_clip_client_requests(client, n):
    recorded = json.loads(DATA.read_text())["requests"][n]
    assert recorded["content_type"] is None  # ClipClient sends a JSON body without one
    body = recorded["body"]
    res = client.post(recorded["path"], content=json.dumps(body).encode())
    assert res.status_code == 200, res.text
    items = res.json()
    assert 1 <= len(items) <= body["num_images"]
    assert {"id", "similarity", "caption", "url", "image_path", "image"} <= set(items[0])


def test_any_content_type_is_json(client):
    # the front end's fetch() sends its JSON string as text/plain, as clip_back accepts
    body = {"text": "a red square", "modality": "image", "num_images": 2, "indice_name": "photos"}
    res = client.post(
        "/knn-service", content=json.dumps(body), headers={"content-type": "text/plain"}
    )
    assert res.status_code == 200 and len(res.json()) == 2
    assert_error(client.post("/knn-service", content=b"{bad"), 400, "malformed JSON")
    assert_error(client.post("/metadata", content=b"[" * 100_000), 400, "")


def test_bodies_are_documented(client):
    paths = client.get("/openapi.json").json()["paths"]
    schema = paths["/knn-service"]["post"]["requestBody"]["content"]["application/json"]
    assert {"text", "image", "embedding_input", "deduplicate"} <= set(
        schema["schema"]["properties"]
    )
    assert "/metadata" in paths and "/indices-list" in paths


def _clip_client_module():
    """clip_retrieval.clip_client from an installed clip-retrieval, loaded from its file:
    the package's __init__ imports the whole back end (flask, faiss, torch<2 pins), which
    CI installs without (``pip install --no-deps``); the client needs only requests."""
    pytest.importorskip("requests")
    spec = importlib.util.find_spec("clip_retrieval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("clip-retrieval is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "clip_client.py"
    mod_spec = importlib.util.spec_from_file_location("_clip_client_under_test", path)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def test_real_clip_client(app, tmp_path):
    cc = _clip_client_module()
    query_png = tmp_path / "q.png"
    query_png.write_bytes(png())
    with live_server(app) as base:
        client = cc.ClipClient(url=f"{base}/knn-service", indice_name="photos", num_images=4)
        by_text = client.query(text="a red square")
        by_image = client.query(image=str(query_png))
        by_vector = cc.ClipClient(
            url=f"{base}/knn-service", indice_name="photos", num_images=2, deduplicate=False
        ).query(embedding_input=_vector_of(app, by_text[0]["id"]))
        captions = cc.ClipClient(
            url=f"{base}/knn-service", indice_name="photos", modality=cc.Modality.TEXT
        ).query(text="a blue square")
    for items in (by_text, by_image):
        assert 1 <= len(items) <= 4 and {"id", "similarity", "caption", "url"} <= set(items[0])
    tc = TestClient(app, base_url="http://127.0.0.1")
    assert by_text[0]["id"] == native(tc, {"text": "a red square", "k": 1})[0]["id"]
    assert by_vector[0]["id"] == by_text[0]["id"]
    assert captions[0]["caption"] == "a blue square"


def test_real_clip_client_with_an_api_key(paths):
    cc = _clip_client_module()
    app = create_app(ServerConfig(collections=paths, api_key="a-long-enough-key"))
    with live_server(app) as base:
        url = base.replace("http://", "http://clip:a-long-enough-key@") + "/knn-service"
        items = cc.ClipClient(url=url, indice_name="photos", num_images=2).query(text="red")
        refused = cc.ClipClient(url=f"{base}/knn-service", indice_name="photos").query(text="red")
    assert len(items) >= 1 and "similarity" in items[0]
    assert refused == {"error": "missing or wrong API key", "status": 401}


def _vector_of(app, image_id: int) -> list[float]:
    coll = app.state.ctx.registry.get("photos").current()
    return coll.vectors.dense(np.asarray([image_id]))[0].astype(float).tolist()


def test_cors_for_a_front_end_on_another_origin(paths):
    """clip-retrieval's front end runs on its own origin: with --cors-origin its browser
    preflight and calls are allowed, even with an API key; other origins get no grant."""
    front = "http://localhost:1234"
    app = create_app(ServerConfig(collections=paths, api_key="sekrit", cors_origins=(front,)))
    c = TestClient(app, base_url="http://127.0.0.1")
    pre = c.options(
        "/knn-service",
        headers={"Origin": front, "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == front
    body = {"text": "a red square", "modality": "image", "num_images": 2, "indice_name": "photos"}
    got = c.post("/knn-service", json=body, headers={"Origin": front, "x-api-key": "sekrit"})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == front
    other = c.post(
        "/knn-service", json=body, headers={"Origin": "http://evil.example", "x-api-key": "sekrit"}
    )
    assert "access-control-allow-origin" not in other.headers
    assert c.post("/knn-service", json=body, headers={"Origin": front}).status_code == 401
    plain = TestClient(create_app(ServerConfig(collections=paths)), base_url="http://127.0.0.1")
    got = plain.post("/knn-service", json=body, headers={"Origin": front})
    assert "access-control-allow-origin" not in got.headers  # off by default


def test_cli_refuses_a_bad_cors_origin(tmp_path):
    from typer.testing import CliRunner

    from vlmsearch.cli.app import app as cli

    res = CliRunner().invoke(cli, ["serve", "--cors-origin", "localhost:1234"])
    assert res.exit_code == 1 and "give a scheme and host" in res.output


def test_native_search_dedupe(client, paths):
    """The native search's ``dedupe`` uses the same rule: the copy and its original
    never both come back (with the tiny model both may join a better-ranked image)."""
    coll = Collection.open(paths["dups"])
    names = {r["path"]: i for i, r in coll.rows(coll.vectors.ids).items()}
    pair = {names["img0000.png"], names["copy-of-first.png"]}
    body = {"text": "a red square", "k": 6}
    plain = {h["id"] for h in native(client, body, "dups")}
    assert pair <= plain
    deduped = native(client, {**body, "dedupe": True}, "dups")
    assert len(pair & {h["id"] for h in deduped}) <= 1
    assert deduped[0]["id"] == native(client, body, "dups")[0]["id"]
