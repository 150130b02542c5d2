"""The sample schema's pipeline names: one table feeds the pipeline registry, the store and the export."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from refcoco_edit import schema
from refcoco_edit.pipelines import PIPELINES as REGISTRY
from refcoco_edit.pipelines import pipeline_class


def test_every_registered_pipeline_is_a_valid_sample_value() -> None:
    assert set(REGISTRY) <= set(schema.PIPELINES)
    for name in REGISTRY:
        assert pipeline_class(name).name == name


def test_label_numbers_of_earlier_exports_never_move() -> None:
    # an exported dataset stores the pipeline as a ClassLabel index; these are the published numbers
    first = ["composition", "region_edit", "inpaint", "classical_inpaint", "manual", "synthetic"]
    assert list(schema.PIPELINES[:6]) == first
    assert schema.features()["pipeline"].names[:6] == first


def test_a_new_pipeline_is_one_table_line_away(tmp_path) -> None:
    """The README's recipe: a module and one line in PIPELINE_CLASSES make a name the registry loads,
    the schema validates and the export labels (appended after the published ones)."""
    (tmp_path / "recolour_pipe.py").write_text(textwrap.dedent('''
        from refcoco_edit.pipelines.capabilities import EditPipeline

        class RecolourPipeline(EditPipeline):
            name = "recolour"
            label = "recolour (no model)"
            edit_types = ("attribute",)
            default_model = "none"
            needs_weights = False
    '''))
    code = textwrap.dedent('''
        import sys, types
        from pathlib import Path
        import refcoco_edit
        # schema.py with one more line in its table, as a contributor would write it
        src = (Path(refcoco_edit.__file__).parent / "schema.py").read_text()
        anchor = '    "classical_inpaint": '
        assert anchor in src
        src = src.replace(anchor, '    "recolour": "recolour_pipe:RecolourPipeline",\\n' + anchor, 1)
        schema = types.ModuleType("refcoco_edit.schema")
        schema.__file__ = "schema.py"
        sys.modules["refcoco_edit.schema"] = schema
        exec(compile(src, "schema.py", "exec"), schema.__dict__)
        from refcoco_edit.pipelines import pipeline_class
        assert pipeline_class("recolour").edit_types == ("attribute",)
        assert schema.PIPELINES[-1] == "recolour" and schema.PIPELINES[4] == "manual"
        assert schema.features()["pipeline"].names[-1] == "recolour"
        print("ok")
    ''')
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(tmp_path), "PATH": ""}, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
