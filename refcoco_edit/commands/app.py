"""`refcoco-edit app`: serve the annotation app, and manage its users and user study.

    refcoco-edit app --store work/refcoco-edit.sqlite [--host 127.0.0.1] [--port 7860] [--refcoco sample]
    refcoco-edit app users add NAME --role annotator|reviewer|admin --store PATH [--password-file F]
    refcoco-edit app users list|passwd|import ... --store PATH
    refcoco-edit app users disable|enable|remove NAME --store PATH
    refcoco-edit app study add MANIFEST --store PATH
    refcoco-edit app study export --store PATH [--out FILE]

Passwords come from `--password-file` (its first line), else from a prompt (asked twice) when stdin
is a terminal, else from the first line of stdin; never from the command line, where other users of
the machine could read them. The server listens on loopback unless `--host` says otherwise.

A password change, `disable` or `remove` ends the account's sign-in sessions at their next request,
also in a server that is running; sessions expire after `--session-hours` anyway. `remove` deletes the
account and its claims on work but keeps what it did: samples keep their annotator and reviewer
names, and reviews and the audit log keep every entry (`disable` keeps the account for later).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _store_arg(p: argparse.ArgumentParser, top: bool = False) -> None:
    # Sub-subcommands repeat --store with a suppressed default, so that `app --store X users list` and
    # `app users list --store X` both work (a subparser's default would overwrite the parent's value).
    p.add_argument("--store", type=Path, metavar="PATH", default=None if top else argparse.SUPPRESS,
                   help="the annotation store (SQLite file; images in PATH.blobs/)")


def register(sub) -> argparse.ArgumentParser:
    from refcoco_edit.models.resolver import add_model_argument

    p = sub.add_parser("app", help="serve the annotation app (Gradio); manage its users and user study",
                       description="Serve the annotation app, or manage its users and user study.")
    _store_arg(p, top=True)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 picks a free one)")
    g = p.add_argument_group("data")
    g.add_argument("--refcoco", default="sample", metavar="ROOT",
                   help="REFER root folder; 'sample' (default) = the bundled RefShapes copy")
    g.add_argument("--dataset", metavar="NAME", help="refcoco, refcoco+, refcocog ... (inferred when ROOT has one)")
    g.add_argument("--split-by", metavar="BY", help="unc, google, umd ... (inferred when there is one refs file)")
    g.add_argument("--images", metavar="DIR", help="image folder (default ROOT/images/mscoco/images/train2014)")
    g.add_argument("--split", help="queue only refs of this split")
    g.add_argument("--candidates", type=Path, metavar="FILE",
                   help="selection verdicts from `refcoco-edit candidates --json` (default: computed at start)")
    g.add_argument("--all-refs", action="store_true", help="queue every ref, not only the eligible ones")
    m = p.add_argument_group("generation")
    m.add_argument("--pipeline-model", action="append", default=[], metavar="PIPELINE=MODEL",
                   help="model of a pipeline (repeatable), e.g. region_edit=tiny-sd15 composition=paint-by-example")
    add_model_argument(m)
    m.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when present)")
    m.add_argument("--steps", type=int, default=50, help="default denoising steps (default 50)")
    m.add_argument("--max-candidates", type=int, default=8, help="most candidates per request (default 8)")
    m.add_argument("--no-fsync", action="store_true",
                   help="commit without fsync (SQLite synchronous=NORMAL): faster saves; a crash of the app loses "
                        "nothing, a power cut may lose the last seconds of work")
    m.add_argument("--ttl-minutes", type=float, default=30.0,
                   help="an untouched claim on a ref expires after this long (default 30)")
    m.add_argument("--session-hours", type=float, default=12.0,
                   help="a sign-in session ends after this long (default 12)")
    m.add_argument("--llm-base-url", metavar="URL", help="OpenAI-compatible endpoint for rephrasings")
    m.add_argument("--llm-model", metavar="NAME", help="LLM for rephrasings (default: the offline rephraser "
                                                       "unless an endpoint is set)")

    sub2 = p.add_subparsers(dest="app_command", metavar="{users,study}")
    users = sub2.add_parser("users", help="add, list, change or import sign-in accounts")
    u = users.add_subparsers(dest="users_command", metavar="{add,list,passwd,import,disable,enable,remove}")
    u.required = True
    add = u.add_parser("add", help="add an account")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=("annotator", "reviewer", "admin"))
    add.add_argument("--password-file", type=Path, metavar="FILE", help="read the password from FILE's first line")
    _store_arg(add)
    lst = u.add_parser("list", help="list accounts and roles")
    _store_arg(lst)
    pw = u.add_parser("passwd", help="set an account's password")
    pw.add_argument("name")
    pw.add_argument("--password-file", type=Path, metavar="FILE")
    _store_arg(pw)
    for name, text in (("disable", "disable an account: no sign-in, its sessions end, its claims are released"),
                       ("enable", "enable a disabled account again"),
                       ("remove", "delete an account (its samples, reviews and audit entries stay)")):
        sp = u.add_parser(name, help=text)
        sp.add_argument("name")
        _store_arg(sp)
    imp = u.add_parser("import", help="add accounts from a YAML/JSON list of {name, role, password_file}")
    imp.add_argument("file", type=Path)
    _store_arg(imp)

    study = sub2.add_parser("study", help="user-study items and results")
    s = study.add_subparsers(dest="study_command", metavar="{add,export}")
    s.required = True
    sadd = s.add_parser("add", help="add items from a JSON-lines manifest (see annotation_app.user_study)")
    sadd.add_argument("manifest", type=Path)
    _store_arg(sadd)
    sexp = s.add_parser("export", help="means per method with 95%% intervals, as CSV")
    sexp.add_argument("--out", type=Path, help="write the CSV here (default: print it)")
    _store_arg(sexp)
    return p


def _need_store(args: argparse.Namespace) -> Path:
    from refcoco_edit.errors import InputError

    if getattr(args, "store", None) is None:
        raise InputError("give --store PATH (the annotation store)")
    return Path(args.store)


def _users(args: argparse.Namespace) -> int:
    from annotation_app.users import import_users, read_password
    from refcoco_edit.store import Store

    with Store.open(_need_store(args)) as store:
        if args.users_command == "add":
            user = store.add_user(args.name, args.role, read_password(args.password_file), user="cli")
            print(f"added {user.name} ({user.role})")
        elif args.users_command == "passwd":
            store.set_password(args.name, read_password(args.password_file), user="cli")
            print(f"password of {args.name} changed")
        elif args.users_command in ("disable", "enable"):
            store.set_disabled(args.name, args.users_command == "disable", user="cli")
            print(f"{args.name} {args.users_command}d")
        elif args.users_command == "remove":
            store.remove_user(args.name, user="cli")
            print(f"removed {args.name} (their samples, reviews and audit entries stay)")
        elif args.users_command == "list":
            for u in store.list_users():
                state = "disabled" if u.disabled else ("password set" if u.has_password else "no password")
                print(f"{u.name}\t{u.role}\t{state}\t{u.created_at}")
        elif args.users_command == "import":
            for name, role in import_users(store, args.file):
                print(f"added {name} ({role})")
    return 0


def _study(args: argparse.Namespace) -> int:
    from annotation_app.user_study import StudyStore

    store = _need_store(args)
    study = StudyStore(Path(f"{store}.study.sqlite"))
    try:
        if args.study_command == "add":
            print(f"added {study.import_manifest(args.manifest)} item(s)")
        else:
            text = study.export_csv()
            if args.out:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(text, encoding="utf-8")
                print(f"wrote {args.out}")
            else:
                print(text, end="")
    finally:
        study.close()
    return 0


def config_from_args(args: argparse.Namespace):
    from annotation_app.context import AppConfig, parse_pipeline_models
    from refcoco_edit.errors import InputError
    from refcoco_edit.models.resolver import parse_model_overrides
    from refcoco_edit.text.llm import LLMSettings, llm_configured

    if args.steps < 1 or args.max_candidates < 1 or args.ttl_minutes <= 0 or args.session_hours <= 0:
        raise InputError("--steps, --max-candidates, --ttl-minutes and --session-hours must be positive")
    llm = None
    if llm_configured(args.llm_base_url, args.llm_model):
        llm = LLMSettings(base_url=args.llm_base_url, **({"model": args.llm_model} if args.llm_model else {}))
    return AppConfig(store_path=_need_store(args), refcoco=args.refcoco, dataset=args.dataset,
                     split_by=args.split_by, images=args.images, split=args.split, candidates_file=args.candidates,
                     include_ineligible=args.all_refs, pipeline_models=parse_pipeline_models(args.pipeline_model),
                     model_overrides=parse_model_overrides(args.model_overrides), device=args.device,
                     assignment_ttl_s=args.ttl_minutes * 60.0, max_candidates=args.max_candidates,
                     default_steps=args.steps, llm=llm, durable=not args.no_fsync)


def run(args: argparse.Namespace) -> int:
    if args.app_command == "users":
        return _users(args)
    if args.app_command == "study":
        return _study(args)
    config = config_from_args(args)
    from annotation_app.app import configure_process

    configure_process(config.store_path, config.max_upload_pixels)
    from annotation_app.app import launch
    from annotation_app.context import AppContext

    ctx = AppContext(config)
    try:
        print(f"serving the annotation app for {config.store_path} on http://{args.host}:{args.port}", flush=True)
        launch(ctx, host=args.host, port=args.port, block=True, session_ttl_s=args.session_hours * 3600.0)
    finally:
        ctx.close()
    return 0
