//! Canonical resource quantities, as kube-apiserver stores them.
//!
//! The API server rewrites every quantity into its canonical form (`0.5` →
//! `500m`, `10000` → `10k`, `1.5Gi` → `1536Mi`). The operator's drift check
//! compares its desired Deployment with the stored one, so a desired
//! quantity in any other spelling looks like drift once the operator reads
//! the whole object (after a restart): one redundant apply each time. The
//! builders therefore get canonical quantities from `validate`.
//!
//! Hand-written: k8s-openapi carries quantities as plain strings, and the
//! crates that parse them (kube_quantity) do arithmetic but do not produce
//! Kubernetes' canonical form. This follows apimachinery's
//! `Quantity.CanonicalizeBytes`: the suffix family of the input is kept
//! (binary `Ki`…`Ei`, decimal `m`…`E`, or an `e` exponent); binary values
//! below 1024 or with a fractional byte fall back to decimal; decimal values
//! take the largest exponent (a multiple of 3) that keeps the number whole;
//! precision below a milli-unit is rounded up. Like apimachinery's
//! `ParseQuantity`, a spelling its fast path accepts as canonical is kept
//! verbatim (`+2`, `1E6`, `007` are stored as written).

/// The quantity could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantityError(pub &'static str);

impl std::fmt::Display for QuantityError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    BinarySi,
    DecimalSi,
    DecimalExponent,
}

const INVALID: QuantityError =
    QuantityError("must be a quantity such as 500m, 2, 1.5Gi or 1e3 (a number with an optional suffix)");
const TOO_LARGE: QuantityError = QuantityError("is out of the range of a Kubernetes quantity");

/// `s` in Kubernetes' canonical form.
pub fn canonical(s: &str) -> Result<String, QuantityError> {
    let (negative, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(number_end);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return Err(INVALID);
    }
    let (format, power_of_ten, power_of_two) = match suffix {
        "" => (Format::DecimalSi, 0, 0),
        "n" => (Format::DecimalSi, -9, 0),
        "u" => (Format::DecimalSi, -6, 0),
        "m" => (Format::DecimalSi, -3, 0),
        "k" => (Format::DecimalSi, 3, 0),
        "M" => (Format::DecimalSi, 6, 0),
        "G" => (Format::DecimalSi, 9, 0),
        "T" => (Format::DecimalSi, 12, 0),
        "P" => (Format::DecimalSi, 15, 0),
        "E" => (Format::DecimalSi, 18, 0),
        "Ki" => (Format::BinarySi, 0, 10),
        "Mi" => (Format::BinarySi, 0, 20),
        "Gi" => (Format::BinarySi, 0, 30),
        "Ti" => (Format::BinarySi, 0, 40),
        "Pi" => (Format::BinarySi, 0, 50),
        "Ei" => (Format::BinarySi, 0, 60),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| INVALID)?;
            (Format::DecimalExponent, exp, 0)
        }
        _ => return Err(INVALID),
    };
    if whole.len() + fraction.len() > 30 {
        return Err(TOO_LARGE);
    }
    if kept_verbatim(whole, fraction, format, power_of_ten, power_of_two) {
        return Ok(s.to_owned());
    }
    // value = digits × 2^power_of_two × 10^(power_of_ten − fraction digits),
    // counted in milli-units and rounded up.
    let digits: i128 = format!("{whole}{fraction}").parse().map_err(|_| INVALID)?;
    let scaled = digits.checked_mul(1i128 << power_of_two).ok_or(TOO_LARGE)?;
    let exponent = power_of_ten + 3 - i32::try_from(fraction.len()).map_err(|_| TOO_LARGE)?;
    let milli = if exponent >= 0 {
        scaled.checked_mul(pow10(exponent)?).ok_or(TOO_LARGE)?
    } else {
        let divisor = pow10(-exponent)?;
        scaled / divisor + i128::from(scaled % divisor != 0)
    };
    // Kubernetes caps quantities at 2^63 − 1 of the base unit.
    if milli / 1000 > i128::from(i64::MAX) {
        return Err(TOO_LARGE);
    }
    if milli == 0 {
        return Ok("0".to_owned());
    }
    let sign = if negative { "-" } else { "" };

    let binary_fits = format == Format::BinarySi && milli >= 1024 * 1000 && milli % 1000 == 0;
    if binary_fits {
        let (mut value, mut shift) = (milli / 1000, 0);
        while value % 1024 == 0 && shift < 60 {
            value /= 1024;
            shift += 10;
        }
        let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][shift / 10];
        return Ok(format!("{sign}{value}{suffix}"));
    }
    let (mut value, mut exp) = (milli, -3);
    while value % 1000 == 0 && exp < 18 {
        value /= 1000;
        exp += 3;
    }
    let suffix = if format == Format::DecimalExponent {
        if exp == 0 { String::new() } else { format!("e{exp}") }
    } else {
        let index = usize::try_from((exp + 3) / 3).map_err(|_| TOO_LARGE)?;
        ["m", "", "k", "M", "G", "T", "P", "E"][index].to_owned()
    };
    Ok(format!("{sign}{value}{suffix}"))
}

/// apimachinery's fast path: a quantity whose digits fit an int64 at a scale
/// of at least milli keeps the string it was parsed from when that string is
/// already in canonical shape.
fn kept_verbatim(whole: &str, fraction: &str, format: Format, power_of_ten: i32, power_of_two: u32) -> bool {
    let num = whole.trim_start_matches('0');
    if format == Format::BinarySi {
        let precision = 15 - num.len() as i64 - i64::from(power_of_two * 3 / 10) - 1;
        let Ok(value) = num.parse::<i64>() else { return false };
        return fraction.is_empty()
            && precision >= 0
            && value.checked_mul(1i64 << power_of_two).is_some()
            && value & 0x07 != 0;
    }
    let shifted = format!("{num}{fraction}");
    let scale = power_of_ten - fraction.len() as i32;
    18 >= shifted.len()
        // apimachinery allows nano here, but pod resources come back rounded
        // up to milli (`100n` is stored as `1m`), which is what children carry.
        && scale >= -3
        && shifted.parse::<i64>().is_ok()
        && scale % 3 == 0
        && !shifted.ends_with("000")
        && !shifted.starts_with('0')
}

fn pow10(exp: i32) -> Result<i128, QuantityError> {
    10i128.checked_pow(u32::try_from(exp).map_err(|_| TOO_LARGE)?).ok_or(TOO_LARGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_take_the_form_kube_apiserver_stores() {
        // Every pair as kube-apiserver v1.36.3 stored it (pod resources
        // written and read back on the test cluster).
        for (input, want) in [
            ("0", "0"),
            ("0.5", "500m"),
            ("100m", "100m"),
            ("1000m", "1"),
            ("1500m", "1500m"),
            ("1.5", "1500m"),
            ("10000", "10k"),
            ("1.5k", "1500"),
            ("2000", "2k"),
            ("0.1m", "1m"),
            ("100n", "1m"),
            ("64Mi", "64Mi"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("0.5Ki", "512"),
            ("1Ki", "1Ki"),
            ("2000Mi", "2000Mi"),
            ("1e3", "1e3"),
            ("1000e0", "1e3"),
            ("1E6", "1E6"),
            ("12e-3", "12e-3"),
            ("+2", "+2"),
            (".5", "500m"),
            ("1G", "1G"),
            ("007", "007"),
            ("0.05", "50m"),
            ("3Mi", "3Mi"),
            ("1.0", "1"),
            ("1000", "1k"),
            ("12345", "12345"),
            ("5e2", "500"),
            ("50e-1", "5"),
            ("8Ki", "8Ki"),
            ("3000", "3k"),
            ("0.001", "1m"),
            ("1.000", "1"),
            ("2.5Mi", "2560Ki"),
            ("100Ki", "100Ki"),
            ("0Mi", "0"),
            ("-0", "0"),
        ] {
            assert_eq!(canonical(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn malformed_or_huge_quantities_are_refused() {
        for bad in ["", "abc", "1.2.3", "1Xi", "k", "1e", "1ex", "."] {
            assert_eq!(canonical(bad), Err(INVALID), "{bad:?}");
        }
        assert_eq!(canonical("100Ei"), Err(TOO_LARGE));
        assert_eq!(canonical("1e40"), Err(TOO_LARGE));
    }
}
