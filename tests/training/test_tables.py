"""Reading real tables: dialects, BOM, encodings, column types, excluded columns, bad-cell blocks, and the
front end of the graph (imputation, categories) against the numpy encoding in onnxruntime and onnx.reference."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import contract as C
from training import frontend
from training.tables import DataError, FeatureEncoder, read_table, sniff


def write(tmp_path, text: str, name: str = "t.csv", encoding: str = "utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return path


def numeric_rows(n: int = 30, sep: str = ",", decimal: str = ".") -> str:
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        a, b = rng.normal(10, 2), rng.normal(-3, 1)
        cells = [f"{a:.3f}", f"{b:.3f}", str(i % 2)]
        lines.append(sep.join(c.replace(".", decimal) for c in cells))
    return "\n".join(lines) + "\n"


def test_semicolon_decimal_comma_and_bom(tmp_path):
    path = write(tmp_path, "\ufeffmean radius;mean texture;target\n" + numeric_rows(sep=";", decimal=","))
    d = sniff(path)
    assert (d.delimiter, d.decimal) == (";", ",")
    t = read_table(path, "target")
    assert t.names == ["mean radius", "mean texture"]  # no '\ufeff' in the first name
    assert all(c.kind == C.KIND_NUMERIC for c in t.columns)
    first = numeric_rows(sep=";", decimal=",").splitlines()[0].split(";")
    assert t.columns[0].values[0] == pytest.approx(float(first[0].replace(",", ".")))


@pytest.mark.parametrize("sep", ["\t", "|", ","])
def test_other_delimiters(tmp_path, sep):
    path = write(tmp_path, sep.join(["a", "b", "y"]) + "\n" + numeric_rows(sep=sep))
    t = read_table(path, "y")
    assert sniff(path).delimiter == sep and t.names == ["a", "b"] and t.n_rows == 30


def test_encoding_option_and_a_helpful_error(tmp_path):
    text = (
        "größe,farbe,y\n"
        + "\n".join(f"{i % 7},{'rot' if i % 2 else 'grün'},{i % 3}" for i in range(30))
        + "\n"
    )
    path = write(tmp_path, text, encoding="latin-1")
    with pytest.raises(DataError, match=r"cannot be read as utf-8.*--encoding"):
        read_table(path, "y")
    t = read_table(path, "y", encoding="latin-1")
    assert t.names == ["größe", "farbe"]
    assert set(t.columns[1].values) == {"rot", "grün"} and t.columns[1].kind == C.KIND_CATEGORICAL


def test_id_index_and_constant_columns_are_excluded_with_a_notice(tmp_path):
    rng = np.random.default_rng(1)
    lines = [",id,x,flat,label"]
    for i in range(40):
        lines.append(f"{i},{1000 + (i * 7) % 40},{rng.normal():.4f},5,{int(i >= 20)}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    t = read_table(path, "label")
    assert t.names == ["x"]
    notes = "\n".join(t.notices)
    assert "'': an unnamed index column" in notes
    assert "'id': unique per row, like an ID" in notes
    assert "'flat': constant" in notes
    kept = read_table(path, "label", features=["id", "x"])  # named columns are the user's call
    assert kept.names == ["id", "x"]


def test_text_id_column_and_drop(tmp_path):
    lines = ["customer,x,y"] + [f"c{i:03d},{i % 7},{i % 2}" for i in range(30)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    t = read_table(path, "y")
    assert t.names == ["x"] and any("'customer': unique per row" in n for n in t.notices)
    with pytest.raises(DataError, match="no feature columns left"):
        read_table(path, "y", drop=["x"])
    with pytest.raises(DataError, match="--drop names no column 'nope'"):
        read_table(path, "y", drop=["nope"])


def test_many_bad_cells_are_reported_in_one_block(tmp_path):
    lines = ["a,b,y"]
    for i in range(60):
        a = "oops" if i in (3, 9, 10, 20, 30, 40, 50) else str(i)
        lines.append(f"{a},{i % 5},{i % 2}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_table(path, "y")
    msg = str(err.value)
    assert msg.count("\n") == 6  # the headline, five cells, "... and 2 more"
    assert (
        "7 cells are not numbers" in msg
        and "row 3 (line 5), column 'a' is not a finite number: 'oops'" in msg
        and "and 2 more" in msg
    )


def test_rows_with_the_wrong_number_of_cells(tmp_path):
    path = write(tmp_path, "a,b,y\n1,2,0\n3,1\n4,5,6,7\n" + "5,6,1\n" * 20)
    with pytest.raises(DataError, match="2 rows have the wrong number of cells"):
        read_table(path, "y")


def test_column_kinds_and_missing_cells(tmp_path):
    lines = ["num,colour,flag,when,y"]
    colours = ["red", "green", "blue"]
    for i in range(40):
        num = "" if i % 10 == 3 else f"{i * 0.5:.1f}"
        colour = "NA" if i == 7 else colours[i % 3]
        flag = ["yes", "no"][i % 2]
        lines.append(f"{num},{colour},{flag},2024-01-{1 + i % 28:02d},{i % 2}")
    path = write(tmp_path, "\n".join(lines) + "\n")
    t = read_table(path, "y")
    kinds = {c.name: c.kind for c in t.columns}
    assert kinds == {"num": "numeric", "colour": "categorical", "flag": "boolean"}
    assert any("'when': dates" in n for n in t.notices)
    assert int(t.columns[0].missing.sum()) == 4 and int(t.columns[1].missing.sum()) == 1
    enc = FeatureEncoder.fit(t.columns, np.arange(30), missing_indicator=True)
    num, colour, flag = enc.inputs
    assert num.impute == float(np.median(t.columns[0].values[:30][~t.columns[0].missing[:30]]))
    assert num.missing_indicator and colour.impute in colours and flag.impute is None
    assert colour.categories == sorted(colours) and flag.categories == ["false", "true"]
    assert enc.design_names == [
        "num",
        "num=missing",
        "colour=blue",
        "colour=green",
        "colour=red",
        "flag=false",
        "flag=true",
    ]
    X = enc.transform(t.columns)
    assert not np.isnan(X).any() and X.shape == (40, 7)


def _frontend_model(specs, centre=None):
    fe = frontend.build(specs, centre)
    out = helper.make_tensor_value_info(fe.output, TensorProto.FLOAT, ["N", None])
    graph = helper.make_graph(fe.nodes, "front", fe.inputs, [out], fe.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(frontend.ML_DOMAIN, frontend.ML_OPSET),
        ],
        ir_version=8,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def test_front_end_graph_matches_the_numpy_encoding():
    specs = [
        C.InputSpec("a", impute=2.5, missing_indicator=True, missing_rate=0.1),
        C.InputSpec("b"),
        C.InputSpec(
            "colour", C.KIND_CATEGORICAL, ["blue", "red"], [0.25, 0.75], impute="red", missing_rate=0.1
        ),
        C.InputSpec("flag", C.KIND_BOOLEAN, ["false", "true"], [0.5, 0.5]),
    ]
    enc = FeatureEncoder(specs)
    x = np.array([[1.0, 2.0], [np.nan, -1.0], [3.0, 0.5], [np.nan, 7.0]], dtype=np.float32)
    s = np.array([["blue", "true"], ["", "false"], ["purple", "false"], ["red", "maybe"]], dtype=object)
    want = enc.design(x, s)
    assert want.tolist() == [
        [1.0, 2.0, 0.0, 1.0, 0.0, 0.0, 1.0],
        [2.5, -1.0, 1.0, 0.0, 1.0, 1.0, 0.0],  # missing number: median + indicator; "" -> the imputed "red"
        [3.0, 0.5, 0.0, 0.25, 0.75, 1.0, 0.0],  # an unknown colour: the training frequencies
        [2.5, 7.0, 1.0, 0.0, 1.0, 0.5, 0.5],
    ]
    assert enc.unknown_counts(s) == {"colour": 1, "flag": 1}
    centre = np.array([2.0, 1.0, 0.5, 0.2, 0.8, 0.5, 0.5], dtype=np.float32)
    model = _frontend_model(specs, centre)
    feeds = {C.INPUT_NAME: x, C.INPUT_CATEGORICAL: s}
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, feeds
    )[0]
    np.testing.assert_allclose(got, want - centre, rtol=0, atol=1e-7)
    ref = ReferenceEvaluator(model).run(None, feeds)[0]
    np.testing.assert_allclose(ref, want - centre, rtol=0, atol=1e-7)


def test_numeric_only_front_end_is_the_input_itself():
    fe = frontend.build([C.InputSpec("a"), C.InputSpec("b")])
    assert fe.output == C.INPUT_NAME and not fe.nodes and not fe.uses_ml


def test_contract_round_trips_its_input_descriptions():
    mc = C.ModelContract(
        task=C.TASK_CLASSIFICATION,
        feature_names=["a", "colour"],
        input_stats=C.InputStats([0.0], [1.0], [[float(i) for i in range(9)]], [[0.1] * 10], 5),
        class_labels=["x", "y"],
        inputs=[
            C.InputSpec("a", impute=1.5, missing_indicator=True, missing_rate=0.2),
            C.InputSpec("colour", C.KIND_CATEGORICAL, ["blue", "red"], [0.4, 0.6], impute="red"),
        ],
    )
    meta = mc.to_metadata()
    back = C.ModelContract.from_metadata(meta)
    assert back == mc and back.numeric_names == ["a"] and back.categorical_names == ["colour"]
    assert back.n_features == 1
    for bad, message in [
        ('[{"name": "a"}]', "one by one"),
        ('[{"name": "a"}, {"name": "colour", "kind": "categorical", "categories": []}]', "non-empty list"),
        ('[{"name": "a", "kind": "weird"}, {"name": "colour"}]', "kind must be"),
    ]:
        with pytest.raises(C.ContractError, match=message):
            C.ModelContract.from_metadata({**meta, C.KEY_INPUTS: bad})
