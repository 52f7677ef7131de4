"""Money shown one way: format_usd (Python) and Relay.usd (static/js/money.js) agree on a table,
and money leaves Relay as plain decimal text (no "0E-9", no ten trailing zeros)."""

import json
import shutil
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from billing.money import cost_usd, decimal_text, format_usd

MONEY_JS = Path(__file__).resolve().parents[2] / "static" / "js" / "money.js"

# value -> what people see: two decimals from a cent up, two significant digits below it.
DISPLAY = {
    "0": "$0.00", "0E-9": "$0.00", "0.0000000000": "$0.00", "-0": "$0.00", None: "$0.00",
    "12.5000000000": "$12.50", "0.01": "$0.01", "0.014": "$0.01", "0.015": "$0.02", "0.099999": "$0.10",
    "0.0004": "$0.0004", "0.000123": "$0.00012", "0.000125": "$0.00013", "0.009999": "$0.01", "0.0099": "$0.0099",
    "0.00995": "$0.01", "0.005": "$0.005", "0.000000001": "$0.000000001", "1E-9": "$0.000000001",
    "0.00000000049": "$0.00000000049", "1234.5": "$1,234.50", "999.995": "$1,000.00", "1000000": "$1,000,000.00",
    "-0.0004": "-$0.0004", "-12.345": "-$12.35", "0.0125": "$0.01", "0.05": "$0.05", "7": "$7.00",
}
# value -> what machines get
TEXT = {
    "0E-9": "0", "0.0000000000": "0", "-0": "0", None: "0", "12.5000000000": "12.5", "0.000123000": "0.000123",
    "10": "10", "100.00": "100", "1E+2": "100", "1E-9": "0.000000001", "0.5": "0.5",
}


def _generated() -> list[str]:
    """Every digit pattern around each power of ten Relay can store (nano-dollars to millions)."""
    values = []
    for exponent in range(-10, 7):
        for mantissa in ("1", "4", "5", "9", "95", "995", "9995", "1234", "12345", "45", "49", "5001"):
            values.append(str(Decimal(mantissa).scaleb(exponent - len(mantissa) + 1)))
    return values


def _js_usd(values: list) -> list[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; the browser tests check Relay.usd on the pages")
    script = ("const m = require(process.argv[1]); let input = '';"
              "process.stdin.on('data', d => input += d);"
              "process.stdin.on('end', () => console.log(JSON.stringify(JSON.parse(input).map(m.usd))));")
    out = subprocess.run([node, "-e", script, str(MONEY_JS)], input=json.dumps(values), capture_output=True,
                         text=True, check=True, timeout=60)
    return json.loads(out.stdout)


@pytest.mark.parametrize("value, shown", DISPLAY.items())
def test_the_display_rule(value, shown):
    assert format_usd(value) == shown


def test_python_and_javascript_agree():
    values = list(DISPLAY) + _generated()
    assert _js_usd(values) == [format_usd(v) for v in values]
    # The JS reads what a chart hands it, numbers too (0.015 is 0.01499... as a double, 1e-7 prints so).
    assert _js_usd([0.015, 1e-7, 12.5, 0]) == ["$0.02", "$0.0000001", "$12.50", "$0.00"]


def test_a_nonzero_amount_never_shows_as_zero_or_in_scientific_notation():
    for value in _generated():
        shown = format_usd(value)
        assert shown != "$0.00" and "E" not in shown.upper(), (value, shown)


@pytest.mark.parametrize("value, text", TEXT.items())
def test_machine_text_has_no_exponent_or_needless_zeros(value, text):
    assert decimal_text(value) == text


def test_the_streamed_events_carry_plain_text():
    from agents import events

    zero = cost_usd(0)  # Decimal("0E-9"): str() of it was what the chat got
    assert str(zero) == "0E-9"
    assert events.usage(1, 2, zero, "m")["cost"] == "0" and events.done("complete", 3, zero)["cost"] == "0"
    assert events.done("complete", 3, Decimal("0.0001230000"))["cost"] == "0.000123"
