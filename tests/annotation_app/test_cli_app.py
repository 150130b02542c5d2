"""`refcoco-edit app ...`: accounts, the user study's import and export, and the serve options."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from refcoco_edit.cli import build_parser, main
from refcoco_edit.errors import InputError
from refcoco_edit.store import Store


def test_app_is_registered_and_light():
    code = ("import sys; from refcoco_edit.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('gradio', 'torch', 'diffusers', 'annotation_app.app') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    args = build_parser().parse_args(["app", "--store", "s.sqlite"])
    assert (args.host, args.port, args.refcoco, args.app_command) == ("127.0.0.1", 7860, "sample", None)


def test_python_m_annotation_app_names_itself_in_usage_and_errors(tmp_path, capsys):
    from annotation_app.__main__ import main as module_main

    with pytest.raises(SystemExit):
        module_main(["--help"])
    usage = capsys.readouterr().out
    assert usage.startswith("usage: python -m annotation_app [-h] [--store PATH]")
    with pytest.raises(SystemExit):
        module_main(["users", "--help"])
    assert capsys.readouterr().out.startswith("usage: python -m annotation_app users ")
    store = tmp_path / "s.sqlite"
    assert module_main(["users", "add", "carol", "--role", "admin", "--store", str(store),
                        "--password-file", str(_password_file(tmp_path))]) == 0
    with Store.open(store) as s:
        assert s.get_user("carol").role == "admin"
    assert module_main(["users", "list"]) == 2
    assert capsys.readouterr().err.startswith("python -m annotation_app: error: ")


def _password_file(tmp_path):
    pw = tmp_path / "pw.txt"
    pw.write_text("long enough secret\n")
    return pw


def test_users_add_list_passwd(tmp_path, capsys, monkeypatch):
    store = tmp_path / "s.sqlite"
    pw = tmp_path / "pw"
    pw.write_text("correct horse\n")
    assert main(["app", "users", "add", "alice", "--role", "reviewer", "--store", str(store),
                 "--password-file", str(pw)]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("battery staple\n"))
    assert main(["app", "--store", str(store), "users", "add", "bob", "--role", "annotator"]) == 0
    with Store.open(store) as s:
        assert s.verify_user("alice", "correct horse").role == "reviewer"
        assert s.verify_user("bob", "battery staple").role == "annotator"
        assert s.verify_user("bob", "battery staple\n") is None
    capsys.readouterr()
    assert main(["app", "users", "list", "--store", str(store)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split("\t")[:3] for ln in lines] == [["alice", "reviewer", "password set"],
                                                  ["bob", "annotator", "password set"]]
    monkeypatch.setattr(sys, "stdin", io.StringIO("a new password\n"))
    assert main(["app", "users", "passwd", "bob", "--store", str(store)]) == 0
    with Store.open(store) as s:
        assert s.verify_user("bob", "a new password") is not None


def test_users_refusals(tmp_path, monkeypatch, capsys):
    store = tmp_path / "s.sqlite"
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["app", "users", "add", "carol", "--role", "admin", "--store", str(store)]) == 2
    assert "at least 8 characters" in capsys.readouterr().err
    assert main(["app", "users", "list"]) == 2
    assert "--store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["app", "users", "add", "dave", "--role", "king", "--store", str(store)])
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    main(["app", "users", "add", "erin", "--role", "admin", "--store", str(store)])
    monkeypatch.setattr(sys, "stdin", io.StringIO("long enough\n"))
    assert main(["app", "users", "add", "erin", "--role", "admin", "--store", str(store)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_users_import(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ann").write_text("annotator-secret\n")
    (tmp_path / "users.yaml").write_text("users:\n  - {name: ann, role: annotator, password_file: secrets/ann}\n"
                                         "  - {name: bot, role: annotator}\n")
    store = tmp_path / "s.sqlite"
    assert main(["app", "users", "import", str(tmp_path / "users.yaml"), "--store", str(store)]) == 0
    assert main(["app", "users", "import", str(tmp_path / "users.yaml"), "--store", str(store)]) == 0  # idempotent
    with Store.open(store) as s:
        assert s.verify_user("ann", "annotator-secret") is not None
        assert [(u.name, u.has_password) for u in s.list_users()] == [("ann", True), ("bot", False)]


def test_study_add_and_export(tmp_path, capsys):
    from annotation_app.user_study import StudyStore
    from tests.annotation_app.test_user_study import write_manifest

    store = tmp_path / "s.sqlite"
    manifest = write_manifest(tmp_path / "m", n_items=2)
    assert main(["app", "study", "add", str(manifest), "--store", str(store)]) == 0
    assert "added 2 item(s)" in capsys.readouterr().out
    study = StudyStore(tmp_path / "s.sqlite.study.sqlite")
    try:
        for item in study.item_ids():
            study.rate("r1", item, {"ip2p": (1, 2), "magicbrush": (3, 4), "referdiffusion": (5, 5)})
    finally:
        study.close()
    out = tmp_path / "res" / "study.csv"
    assert main(["app", "study", "export", "--store", str(store), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].split(",")[:5] == ["method", "ratings", "items", "raters", "quality_mean"]
    assert rows[3].startswith("referdiffusion,2,2,1,5.0000")


def test_serve_options_are_checked(tmp_path):
    from refcoco_edit.commands.app import config_from_args

    p = build_parser()
    cfg = config_from_args(p.parse_args(["app", "--store", str(tmp_path / "s.sqlite"), "--pipeline-model",
                                         "region_edit=tiny-sd15", "--steps", "7", "--ttl-minutes", "2"]))
    assert cfg.pipeline_models == {"region_edit": "tiny-sd15"} and cfg.default_steps == 7
    assert cfg.assignment_ttl_s == 120 and cfg.llm is None
    with pytest.raises(InputError, match="unknown pipeline"):
        config_from_args(p.parse_args(["app", "--store", "x", "--pipeline-model", "magic=tiny-sd15"]))
    with pytest.raises(InputError, match="positive"):
        config_from_args(p.parse_args(["app", "--store", "x", "--steps", "0"]))


def test_serving_a_store_without_users_is_refused(tmp_path, refshapes, verdicts):
    from annotation_app.app import launch
    from annotation_app.context import AppConfig, AppContext
    from annotation_app.errors import AppError

    ctx = AppContext(AppConfig(store_path=tmp_path / "s.sqlite", durable=False), data=refshapes, verdicts=verdicts)
    try:
        with pytest.raises(AppError, match="has no users"):
            launch(ctx, block=False)
    finally:
        ctx.close()
