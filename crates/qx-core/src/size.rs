//! Byte sizes and rates written by people (`4GiB`, `500MB`, `10MiB/s`): one parser, one rule,
//! used by the agent's configuration, the server's environment and the project's tools, so the
//! same string means the same number of bytes everywhere.
//!
//! The rule: a whole or decimal number, optional spaces, then a unit (letters in any case):
//! - none or `B`: bytes;
//! - `KB`, `MB`, `GB`, `TB`: powers of 1000 (SI);
//! - `KiB`, `MiB`, `GiB`, `TiB`: powers of 1024 (binary);
//! - bare `K`, `M`, `G`, `T`: powers of 1024, as in the sizes of most Unix tools.
//!
//! Decimals are computed exactly (`1.5KiB` is 1536) and must come to a whole number of bytes;
//! a value over `u64::MAX` is refused.

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("size {input:?} is invalid: {reason} (examples: 4096, 500MB, 4GiB, 2G)")]
pub struct SizeError {
    pub input: String,
    pub reason: &'static str,
}

/// Parse a byte size such as `4GiB`, `500 MB` or `4096` by the rule of this module.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let fail = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let text = input.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier = unit_multiplier(unit.trim_start()).ok_or_else(|| fail("unknown unit"))?;
    let (whole, frac) = split_decimal(number).ok_or_else(|| fail("not a number"))?;
    exact_product(whole, frac, multiplier)
        .ok_or_else(|| fail("not a whole number of bytes or too large"))
}

/// Parse a rate such as `10MiB/s` (the same rule, followed by `/s`) into bytes per second.
/// Zero is refused: a rate limit of nothing would stall every download.
pub fn parse_rate(input: &str) -> Result<u64, SizeError> {
    let fail = |reason| SizeError {
        input: input.to_owned(),
        reason,
    };
    let body = input
        .trim()
        .strip_suffix("/s")
        .ok_or_else(|| fail("a rate ends in /s"))?;
    match parse_size(body) {
        Ok(0) => Err(fail("a rate must be above zero")),
        Ok(n) => Ok(n),
        Err(e) => Err(fail(e.reason)),
    }
}

fn unit_multiplier(unit: &str) -> Option<u128> {
    let (si, bin) = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => return Some(1),
        "k" | "kib" => (None, 1),
        "m" | "mib" => (None, 2),
        "g" | "gib" => (None, 3),
        "t" | "tib" => (None, 4),
        "kb" => (Some(1), 0),
        "mb" => (Some(2), 0),
        "gb" => (Some(3), 0),
        "tb" => (Some(4), 0),
        _ => return None,
    };
    Some(match si {
        Some(p) => 1000u128.pow(p),
        None => 1024u128.pow(bin),
    })
}

/// `"12.345"` → (12, ("345")); refuses empty parts other than a missing fraction.
fn split_decimal(number: &str) -> Option<(u128, &str)> {
    let (whole, frac) = match number.split_once('.') {
        Some((w, f)) if !f.is_empty() && !f.contains('.') => (w, f),
        Some(_) => return None,
        None => (number, ""),
    };
    if whole.is_empty() || whole.len() > 30 || frac.len() > 30 {
        return None;
    }
    Some((whole.parse().ok()?, frac))
}

fn exact_product(whole: u128, frac: &str, multiplier: u128) -> Option<u64> {
    let mut total = whole.checked_mul(multiplier)?;
    if !frac.is_empty() {
        let scale = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        let frac_value: u128 = frac.parse().ok()?;
        let scaled = frac_value.checked_mul(multiplier)?;
        if scaled % scale != 0 {
            return None;
        }
        total = total.checked_add(scaled / scale)?;
    }
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_documented_rule() {
        let cases: &[(&str, u64)] = &[
            ("4096", 4096),
            ("12B", 12),
            ("500KB", 500_000),
            ("500kb", 500_000),
            ("4GB", 4_000_000_000),
            ("1TB", 1_000_000_000_000),
            ("4KiB", 4096),
            ("4GiB", 4 << 30),
            ("4G", 4 << 30),
            ("2M", 2 << 20),
            ("1 MiB", 1 << 20),
            ("1.5KiB", 1536),
            ("0.5MB", 500_000),
            ("  7 k ", 7168),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(*bytes), "{text}");
        }
    }

    #[test]
    fn bad_sizes_are_refused_with_their_reason() {
        for text in [
            "",
            "GB",
            "4XB",
            "1.2.3K",
            "1.",
            ".5K",
            "-1",
            "0.3B",
            "99999999999T",
        ] {
            let e = parse_size(text).expect_err(text);
            assert_eq!(e.input, text);
        }
    }

    #[test]
    fn rates_need_a_unit_of_time_and_a_value() {
        assert_eq!(parse_rate("10MiB/s"), Ok(10 << 20));
        assert_eq!(parse_rate("500KB/s"), Ok(500_000));
        assert!(parse_rate("10MiB").is_err());
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
