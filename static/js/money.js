/* Money for people: the one display rule, the same as billing.money.format_usd (Python).

   Two decimals from one cent up; below it, as many decimals as it takes to show two significant
   digits, so an amount that is not zero never reads "$0.00". Works on the decimal text the API
   sends ("0.000123"), digit by digit: a float would round 0.015 down and print 1e-7 as such.
   tests/billing/test_money_display.py runs this file under node against the Python function. */
(function (root) {
  "use strict";
  const SIGNIFICANT_BELOW_A_CENT = 2;

  /* "1.5e-7", " 12.50 ", 0.25 -> {negative, whole: "0", fraction: "00000015"}; null if not a number. */
  function parse(value) {
    const text = String(value === null || value === undefined || value === "" ? "0" : value).trim();
    const match = /^([+-]?)(\d*)(?:\.(\d*))?(?:[eE]([+-]?\d+))?$/.exec(text);
    if (!match || (match[2] + (match[3] || "")) === "") return null;
    let digits = (match[2] || "") + (match[3] || "");
    let point = (match[2] || "").length + Number(match[4] || 0);  // digits before the decimal point
    if (point < 0) { digits = "0".repeat(-point) + digits; point = 0; }
    if (point > digits.length) digits += "0".repeat(point - digits.length);
    const whole = digits.slice(0, point).replace(/^0+/, "") || "0";
    return { negative: match[1] === "-", whole: whole, fraction: digits.slice(point) };
  }

  /* Round half up to `places` decimals, on the digits. */
  function round(whole, fraction, places) {
    const padded = (fraction + "0".repeat(places)).slice(0, places);
    let digits = (whole + padded).split("").map(Number);
    if (Number(fraction.charAt(places) || 0) >= 5) {
      let i = digits.length - 1;
      while (i >= 0 && digits[i] === 9) { digits[i] = 0; i -= 1; }
      if (i < 0) digits.unshift(1); else digits[i] += 1;
    }
    digits = digits.join("");
    return { whole: digits.slice(0, digits.length - places).replace(/^0+(?=\d)/, "") || "0",
             fraction: digits.slice(digits.length - places) };
  }

  function group(whole) {
    return whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  }

  function usd(value) {
    const amount = parse(value);
    if (amount === null) return "$" + String(value);
    const zero = /^0*$/.test(amount.whole + amount.fraction);
    const sign = amount.negative && !zero ? "-" : "";
    if (zero || amount.whole !== "0" || Number(amount.fraction.slice(0, 2)) > 0) {
      const cents = round(amount.whole, amount.fraction, 2);
      return sign + "$" + group(cents.whole) + "." + cents.fraction;
    }
    const first = amount.fraction.search(/[1-9]/);  // below a cent: the first significant digit
    const shown = round("0", amount.fraction, first + SIGNIFICANT_BELOW_A_CENT);
    const fraction = shown.fraction.replace(/0+$/, "");
    return sign + "$" + shown.whole + "." + (fraction + "00").slice(0, Math.max(2, fraction.length));
  }

  root.RelayMoney = { usd: usd };
  if (typeof module !== "undefined" && module.exports) module.exports = root.RelayMoney;
})(typeof window !== "undefined" ? window : globalThis);
