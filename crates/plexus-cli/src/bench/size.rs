//! Human-readable byte sizes for the bench command line.
//!
//! Owns parsing sizes such as `64K`, `1 MiB` or `2g` into a byte count and
//! formatting byte counts back into text such as `1.50 MiB`.
//!
//! Invariants:
//! - every suffix is binary (1024-based): `K`, `KB` and `KiB` all mean 1024;
//!   suffixes are case-insensitive;
//! - only non-negative integers are accepted (no fractions, no sign); a
//!   value that does not fit in a `u64` after scaling is an error, never a
//!   silently wrapped or saturated number.

use thiserror::Error;

/// Why a size string could not be parsed by [`parse_size`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// The input was empty or only whitespace.
    #[error("empty size: expected a number such as 4096, 64K, 1MiB or 2G")]
    Empty,
    /// The input started with a minus sign.
    #[error("size `{0}` is negative: sizes must be zero or positive")]
    Negative(String),
    /// The input did not start with a decimal integer, or the number had a
    /// fractional part or a sign.
    #[error("invalid size `{0}`: expected a whole number optionally followed by B, K, KiB, KB, M, MiB, MB, G, GiB or GB")]
    InvalidNumber(String),
    /// The text after the number is not a known suffix.
    #[error("unknown size suffix `{suffix}` in `{input}`: expected B, K, KiB, KB, M, MiB, MB, G, GiB or GB (all 1024-based)")]
    UnknownSuffix {
        /// The whole input, trimmed.
        input: String,
        /// The unrecognised suffix.
        suffix: String,
    },
    /// The number, after applying the suffix, does not fit in a `u64`.
    #[error("size `{0}` is too large: it does not fit in 64 bits")]
    Overflow(String),
}

/// Parses a byte size: a non-negative decimal integer optionally followed
/// (with optional whitespace in between) by a case-insensitive binary suffix
/// `B`, `K`/`KiB`/`KB`, `M`/`MiB`/`MB` or `G`/`GiB`/`GB`.
///
/// Leading and trailing whitespace is ignored. `"1.5M"`, `"+1"`, `"-1"`,
/// `""` and `"3X"` are errors.
pub fn parse_size(s: &str) -> Result<u64, SizeError> {
    let input = s.trim();
    if input.is_empty() {
        return Err(SizeError::Empty);
    }
    if input.starts_with('-') {
        return Err(SizeError::Negative(input.to_owned()));
    }
    let digits_end = input
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(input.len());
    let (digits, rest) = input.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::InvalidNumber(input.to_owned()));
    }
    let suffix = rest.trim_start();
    let multiplier: u64 = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            // A fraction or a second number is a malformed number, not a
            // suffix: report it as such so the message is useful.
            if suffix.starts_with(|c: char| c == '.' || c == ',' || c.is_ascii_digit()) {
                return Err(SizeError::InvalidNumber(input.to_owned()));
            }
            return Err(SizeError::UnknownSuffix {
                input: input.to_owned(),
                suffix: suffix.to_owned(),
            });
        }
    };
    // `digits` is non-empty ASCII digits, so the only possible failure is
    // overflow.
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(input.to_owned()))?;
    value
        .checked_mul(multiplier)
        .ok_or_else(|| SizeError::Overflow(input.to_owned()))
}

/// Formats a byte count with a binary unit: `"512 B"` below 1 KiB, otherwise
/// two decimals and the largest unit that keeps the value below 1024, e.g.
/// `"1.50 MiB"` or `"64.00 KiB"`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    // 1023.995 and above would print as "1024.00"; move to the next unit.
    while value >= 1023.995 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_integers() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("  17  "), Ok(17));
        assert_eq!(parse_size("18446744073709551615"), Ok(u64::MAX));
    }

    #[test]
    fn suffixes_are_binary_and_case_insensitive() {
        assert_eq!(parse_size("10B"), Ok(10));
        assert_eq!(parse_size("10b"), Ok(10));
        for s in ["1K", "1k", "1KiB", "1kib", "1KB", "1kB", "1 K", "1\tKiB"] {
            assert_eq!(parse_size(s), Ok(1024), "{s}");
        }
        for s in ["3M", "3m", "3MiB", "3MB", "3 mib"] {
            assert_eq!(parse_size(s), Ok(3 << 20), "{s}");
        }
        for s in ["2G", "2g", "2GiB", "2GB", "2 gb"] {
            assert_eq!(parse_size(s), Ok(2 << 30), "{s}");
        }
    }

    #[test]
    fn rejects_empty() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("   "), Err(SizeError::Empty));
    }

    #[test]
    fn rejects_negative() {
        assert_eq!(parse_size("-1"), Err(SizeError::Negative("-1".into())));
        assert_eq!(parse_size(" -4K"), Err(SizeError::Negative("-4K".into())));
    }

    #[test]
    fn rejects_malformed_numbers() {
        for s in ["K", "+5", "1.5M", "1,5M", "abc", "1 2"] {
            assert!(
                matches!(parse_size(s), Err(SizeError::InvalidNumber(_))),
                "{s}: {:?}",
                parse_size(s)
            );
        }
    }

    #[test]
    fn rejects_unknown_suffix() {
        assert_eq!(
            parse_size("3X"),
            Err(SizeError::UnknownSuffix {
                input: "3X".into(),
                suffix: "X".into()
            })
        );
        for s in ["1T", "1KiBs", "1 kilobyte", "1Ki", "1 B B"] {
            assert!(
                matches!(parse_size(s), Err(SizeError::UnknownSuffix { .. })),
                "{s}: {:?}",
                parse_size(s)
            );
        }
        let msg = parse_size("3X").expect_err("must fail").to_string();
        assert!(msg.contains("`X`") && msg.contains("KiB"), "{msg}");
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(
            parse_size("18446744073709551616"),
            Err(SizeError::Overflow("18446744073709551616".into()))
        );
        assert_eq!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow("17179869184G".into()))
        );
        assert_eq!(parse_size("17179869183G"), Ok(17179869183 << 30));
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1.00 KiB");
        assert_eq!(format_bytes(1536), "1.50 KiB");
        assert_eq!(format_bytes(3 << 19), "1.50 MiB");
        assert_eq!(format_bytes(5 << 30), "5.00 GiB");
        assert_eq!(format_bytes((1 << 20) - 1), "1.00 MiB");
        assert_eq!(format_bytes(u64::MAX), "16.00 EiB");
    }

    #[test]
    fn format_then_parse_round_trips_whole_units() {
        for n in [1u64 << 10, 7 << 20, 3 << 30] {
            let text = format_bytes(n).replace(".00", "");
            assert_eq!(parse_size(&text), Ok(n), "{text}");
        }
    }
}
