"""`rie-bench list`: the methods and metrics, and whether their weights are configured (nothing is loaded)."""

from __future__ import annotations

import argparse


def register(sub) -> argparse.ArgumentParser:
    from refcoco_edit.models.resolver import add_model_argument

    p = sub.add_parser("list", help="methods and metrics, and whether their weights are configured",
                       description="List the registered methods and metrics with their weights' status. "
                                   "Names are resolved, nothing is loaded or built.")
    p.add_argument("--clip-model", default="clip-vit-l14", metavar="NAME", help="CLIP model of the CLIP metrics")
    p.add_argument("--aesthetic-model", default="aesthetic", metavar="NAME", help="aesthetic head")
    add_model_argument(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    return p


def collect(args: argparse.Namespace) -> dict:
    from benchmark.methods.base import METHODS, create_method, describe_source
    from benchmark.metrics import create_metric, get_metric_class, metric_names
    from refcoco_edit.errors import RefcocoEditError
    from refcoco_edit.models.resolver import parse_model_overrides

    overrides = parse_model_overrides(args.model_overrides)
    methods = []
    for name in METHODS:
        try:
            method = create_method(name, overrides=overrides)
            reason = method.availability()
            entry = {"name": name, "description": method.description, "model": method.model_name,
                     "weights": method.weights(), "reads": list(method.reads)}
        except RefcocoEditError as exc:
            reason, entry = str(exc), {"name": name}
        entry.update(available=reason is None, reason=reason)
        methods.append(entry)
    metrics = []
    for name in metric_names():
        cls = get_metric_class(name)
        options = {"overrides": overrides, "clip_model": args.clip_model}
        if name == "aesthetic":
            options = {"overrides": overrides, "aesthetic_model": args.aesthetic_model}
        metric = create_metric(name, **options)
        reason = metric.availability()
        # the aesthetic head's CLIP is named by the head's config once loaded: list the head only
        required = metric.requires[:1] if name == "aesthetic" else metric.requires
        weights = {model: describe_source(model, overrides) for model in required}
        metrics.append({"name": name, "outputs": list(cls.output_names()), "higher_is_better": cls.higher_is_better,
                        "description": cls.description, "weights": weights,
                        "available": reason is None, "reason": reason})
    return {"methods": methods, "metrics": metrics}


def run(args: argparse.Namespace) -> int:
    from refcoco_edit.io import dumps

    data = collect(args)
    if args.json:
        print(dumps(data, indent=1))
        return 0
    print("methods:")
    for m in data["methods"]:
        if not m["available"]:
            state = f"unavailable: {m['reason']}"
        else:
            state = f"weights: {m['weights']}" if m.get("weights") else "no weights needed"
        print(f"  {m['name']:<18} {m.get('description', '')}")
        print(f"  {'':<18} {state}")
    print("metrics:")
    for m in data["metrics"]:
        arrow = "↑" if m["higher_is_better"] else "↓"
        outs = ", ".join(m["outputs"])
        if not m["available"]:
            state = f"unavailable: {m['reason']}"
        elif m["weights"]:
            state = "weights: " + "; ".join(f"{k}: {v}" for k, v in m["weights"].items())
        else:
            state = "no weights needed"
        print(f"  {m['name']:<14} {arrow} {outs}")
        print(f"  {'':<16} {state}")
    return 0
