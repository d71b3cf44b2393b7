//! The `Range` request header (RFC 9110 §14): one byte range is served as 206; several ranges
//! are refused with 416 (multipart/byteranges is not served: update agents ask for one range to
//! resume a download); a range unit other than `bytes` is ignored (the whole file is sent, as
//! RFC 9110 requires); a malformed `bytes=` range is refused with 416 rather than silently
//! ignored, so a client with a broken resume learns of it.

/// An inclusive byte range within a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    #[error("multiple ranges ({0}) are not served; ask for one range per request")]
    Multiple(String),
    #[error("range {0:?} is malformed; expected bytes=FIRST-LAST, bytes=FIRST- or bytes=-SUFFIX")]
    Malformed(String),
    #[error("range {range:?} cannot be satisfied: the file has {len} bytes")]
    Unsatisfiable { range: String, len: u64 },
}

/// Resolves a `Range` header against a file of `len` bytes: `Ok(None)` means send it whole.
pub fn resolve(header: &str, len: u64) -> Result<Option<ByteRange>, RangeError> {
    let header = header.trim();
    let Some((unit, set)) = header.split_once('=') else {
        return Err(RangeError::Malformed(header.to_owned()));
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    let specs: Vec<&str> = set
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let spec = match specs.as_slice() {
        [one] => *one,
        [] => return Err(RangeError::Malformed(header.to_owned())),
        _ => return Err(RangeError::Multiple(header.to_owned())),
    };
    let malformed = || RangeError::Malformed(header.to_owned());
    let unsatisfiable = || RangeError::Unsatisfiable {
        range: header.to_owned(),
        len,
    };
    let number = |s: &str| -> Result<u64, RangeError> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed());
        }
        s.parse().map_err(|_| malformed())
    };
    let (first, last) = spec.split_once('-').ok_or_else(malformed)?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        let suffix = number(last)?;
        if suffix == 0 || len == 0 {
            return Err(unsatisfiable());
        }
        let start = len.saturating_sub(suffix);
        return Ok(Some(ByteRange {
            start,
            end: len - 1,
        }));
    }
    let start = number(first)?;
    let end = if last.is_empty() {
        None
    } else {
        Some(number(last)?)
    };
    if let Some(end) = end {
        if end < start {
            return Err(malformed());
        }
    }
    if start >= len {
        return Err(unsatisfiable());
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    Ok(Some(ByteRange { start, end }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u64, end: u64) -> Option<ByteRange> {
        Some(ByteRange { start, end })
    }

    #[test]
    fn single_ranges() {
        assert_eq!(resolve("bytes=0-9", 100), Ok(r(0, 9)));
        assert_eq!(resolve("bytes=10-", 100), Ok(r(10, 99)));
        assert_eq!(resolve("bytes=-10", 100), Ok(r(90, 99)));
        assert_eq!(resolve("bytes=-1000", 100), Ok(r(0, 99)));
        assert_eq!(resolve("bytes=90-1000", 100), Ok(r(90, 99)));
        assert_eq!(resolve("Bytes = 5-5", 100), Ok(r(5, 5)));
    }

    #[test]
    fn other_units_are_ignored() {
        assert_eq!(resolve("items=0-5", 100), Ok(None));
    }

    #[test]
    fn bad_ranges() {
        assert!(matches!(
            resolve("bytes=0-1,5-6", 100),
            Err(RangeError::Multiple(_))
        ));
        assert!(matches!(
            resolve("bytes=100-", 100),
            Err(RangeError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            resolve("bytes=-0", 100),
            Err(RangeError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            resolve("bytes=0-", 0),
            Err(RangeError::Unsatisfiable { .. })
        ));
        for bad in [
            "bytes=5-2",
            "bytes=a-b",
            "bytes=",
            "bytes=-",
            "bytes=1",
            "0-5",
            "bytes=+1-2",
        ] {
            assert!(
                matches!(resolve(bad, 100), Err(RangeError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
