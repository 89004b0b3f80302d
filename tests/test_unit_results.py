"""Unit tests of the console table and FLamby's method naming in flamby_mpi.outputs.results."""
from flamby_mpi.outputs.results import RESULTS_CSV_COLUMNS, flamby_method_name, format_table


def test_flamby_method_name():
    assert flamby_method_name("FedAvg", 100) == "FedAvg100"
    assert flamby_method_name("FedAvg", 5) == "FedAvg5"


def test_results_csv_columns():
    assert RESULTS_CSV_COLUMNS[:3] == ["Test", "Method", "Metric"]


def test_format_table():
    table = format_table({"client_test_0": 0.81234, "client_test_1": float("nan"),
                          "pooled": None, "client_test_10": 1.0})
    assert table.splitlines() == [
        "test set        metric",
        "--------------  ------",
        "client_test_0   0.8123",
        "client_test_1   n/a",
        "pooled          n/a",
        "client_test_10  1.0000",
    ]


def test_format_table_empty():
    assert format_table({}).splitlines() == ["test set  metric", "--------  ------"]


def test_format_table_short_keys_stay_aligned():
    lines = format_table({"pooled": 0.5}).splitlines()
    # The metric column starts at the same position in the header, the rule and the rows.
    assert lines[0].index("metric") == lines[1].rindex("------") == lines[2].index("0.5000")
