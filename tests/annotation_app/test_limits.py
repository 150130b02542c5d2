"""What a browser may send in a picture (`annotation_app.limits`), and how the page shows a refusal
(`tabs.common.guarded`): checked without a server, on the objects the server uses."""

from __future__ import annotations

import io
import types

import numpy as np
import pytest

from annotation_app import limits
from annotation_app.errors import StateError, UploadError
from annotation_app.handlers import annotate as A

pytestmark = pytest.mark.filterwarnings("ignore:.*deprecated.*")


def png(width: int, height: int, mode: str = "L") -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, (width, height)).save(buf, format="PNG")
    return buf.getvalue()


def test_editor_pictures_are_checked_from_their_header():
    assert limits.check_editor_picture(png(640, 480, "RGBA"), "layer") == (640, 480)
    # a flat picture compresses to a few KB however many pixels it has: the header is what counts
    big = png(3000, 3000)
    assert len(big) < 200_000 and 3000 * 3000 > limits.MAX_EDITOR_PIXELS
    with pytest.raises(UploadError, match="layer: image of 3000x3000 pixels is over the limit"):
        limits.check_editor_picture(big, "layer")
    with pytest.raises(UploadError, match="pixels a side"):
        limits.check_editor_picture(png(limits.MAX_EDITOR_SIDE + 1, 2), "layer")
    with pytest.raises(UploadError, match="bytes is over the limit"):
        limits.check_editor_picture(b"\0" * (limits.MAX_EDITOR_BYTES + 1), "layer")
    with pytest.raises(UploadError, match="background: not a readable image"):
        limits.check_editor_picture(b"GIF89a not a png", "background")


def test_a_handler_refuses_too_many_or_too_large_layers(ctx):
    from PIL import Image

    st, _ = A.next_item(ctx, "ann1", None)
    w, h = ctx.image(st.image_id).size
    layer = np.zeros((h, w, 4), np.uint8)
    layer[10:20, 10:20, 3] = 255
    one = Image.fromarray(layer, "RGBA")
    st2, _ = A.region_from_editor(ctx, "ann1", st, {"layers": [one]}, "replace")
    assert st2.region.sum() == 100
    with pytest.raises(UploadError, match="5 layers is over the limit of 4"):
        A.region_from_editor(ctx, "ann1", st, {"layers": [one] * (limits.MAX_EDITOR_LAYERS + 1)}, "replace")
    huge = np.zeros((1, limits.MAX_EDITOR_SIDE + 1), np.uint8)
    with pytest.raises(UploadError, match="pixels a side"):
        A.region_from_editor(ctx, "ann1", st, {"layers": [huge]}, "replace")


def editor():
    from annotation_app.tabs.common import LimitedImageEditor

    return LimitedImageEditor(type="pil", image_mode="RGBA", layers=False)


def blob(kind: str, index, key: str, data: bytes):
    return types.SimpleNamespace(data={"type": kind, "index": index, "id": key}, files=[("blob", data)])


def test_editor_blobs_are_bounded():
    ed = editor()
    assert ed.get_block_name() == "imageeditor"  # the page draws it as Gradio's editor
    layer = png(64, 48, "RGBA")
    ed.accept_blobs(blob("layer", "0", "a", layer))
    assert len(ed.blob_storage["a"].layers) == 1
    # a layer number far out would make Gradio grow a list that long: refused first
    with pytest.raises(UploadError, match="layer number 1000000000"):
        ed.accept_blobs(blob("layer", "1000000000", "a", layer))
    assert len(ed.blob_storage["a"].layers) == 1
    with pytest.raises(UploadError, match="over the limit"):
        ed.accept_blobs(blob("background", None, "a", png(3000, 3000)))
    # values sent in pieces and never used are dropped, oldest first
    for i in range(limits.MAX_PENDING_EDITS + 10):
        ed.accept_blobs(blob("layer", "0", f"k{i}", layer))
    assert len(ed.blob_storage) == limits.MAX_PENDING_EDITS
    assert "a" not in ed.blob_storage and f"k{limits.MAX_PENDING_EDITS + 9}" in ed.blob_storage


def test_editor_values_are_checked_before_gradio_decodes_them(tmp_path):
    import gradio as gr
    from gradio.components.image_editor import EditorData
    from gradio.data_classes import FileData

    ed = editor()

    def file(name: str, data: bytes) -> FileData:
        path = tmp_path / name
        path.write_bytes(data)
        return FileData(path=str(path), orig_name=name)

    ok = EditorData(background=file("bg.png", png(64, 48, "RGB")), layers=[file("l.png", png(64, 48, "RGBA"))])
    value = ed.preprocess(ok)
    assert value["background"].size == (64, 48) and len(value["layers"]) == 1
    many = EditorData(background=None, layers=[file(f"l{i}.png", png(64, 48, "RGBA")) for i in range(5)])
    with pytest.raises(gr.Error, match="5 layers is over the limit"):
        ed.preprocess(many)
    bomb = EditorData(background=file("big.png", png(3000, 3000)), layers=[])
    with pytest.raises(gr.Error, match="3000x3000 pixels is over the limit"):
        ed.preprocess(bomb)


def test_a_refusal_on_the_page_leaves_every_output_as_it_was():
    import gradio as gr

    from annotation_app.tabs import common

    outputs = [object(), "message", object()]

    def refused(*_args):
        common.username(page_request)
        return common.call(lambda: (_ for _ in ()).throw(StateError("pick the <object> first")))

    page_request = types.SimpleNamespace(headers={}, username="ann1", session_hash="s")
    out = common.guarded(refused, outputs, "message")()
    assert [type(x) for x in (out[0], out[2])] == [type(gr.skip())] * 2
    assert out[1] == "**Refused:** pick the &lt;object&gt; first"
    # an API client gets the refusal as its error
    page_request = types.SimpleNamespace(headers={"x-gradio-user": "api"}, username="ann1", session_hash="s")
    with pytest.raises(gr.Error, match="pick the"):
        common.guarded(refused, outputs, "message")()
    with pytest.raises(ValueError, match="message component"):
        common.guarded(refused, outputs, "elsewhere")
