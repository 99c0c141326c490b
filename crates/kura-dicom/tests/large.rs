//! `validate` streams a large instance through a `Read` without holding its
//! values: the instance here is generated on the fly and never exists in
//! memory, and the process's peak resident memory must not grow by anything
//! near its size. Its own test binary, so no other test moves the peak.

#[allow(dead_code)]
#[path = "it/builder.rs"]
mod builder;

use std::io::Read;

use builder::{header, instance};
use dicom_core::Tag;
use kura_dicom::{DicomError, validate};

/// Native pixel data of this size: far more than the memory allowance below.
const PIXEL_DATA_BYTES: u32 = 256 * 1024 * 1024;

/// How far the peak resident set may grow while validating.
const PEAK_GROWTH_BYTES_MAX: u64 = 24 * 1024 * 1024;

/// An instance whose pixel data is produced as it is read.
struct Generated {
    head: Vec<u8>,
    head_pos: usize,
    pixel_bytes_left: u64,
    /// Largest buffer a caller offered to `read`, to see how it reads.
    largest_request: usize,
}

impl Generated {
    fn new(declared: u32, present: u64) -> Self {
        Generated {
            head: instance(&header((0x7FE0, 0x0010), b"OW", declared)),
            head_pos: 0,
            pixel_bytes_left: present,
            largest_request: 0,
        }
    }
}

impl Read for Generated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.largest_request = self.largest_request.max(buf.len());
        if self.head_pos < self.head.len() {
            let n = buf.len().min(self.head.len() - self.head_pos);
            buf[..n].copy_from_slice(&self.head[self.head_pos..self.head_pos + n]);
            self.head_pos += n;
            return Ok(n);
        }
        let n = usize::try_from(self.pixel_bytes_left)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        buf[..n].fill(0x5A);
        self.pixel_bytes_left -= n as u64;
        Ok(n)
    }
}

/// Peak resident set size of this process (Linux), in bytes.
fn peak_resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn validate_streams_large_pixel_data_in_bounded_memory() {
    let before = peak_resident_bytes();

    let mut source = Generated::new(PIXEL_DATA_BYTES, u64::from(PIXEL_DATA_BYTES));
    let head_len = source.head.len() as u64;
    let summary = validate(&mut source).expect("a whole instance validates");
    assert_eq!(summary.pixel_data_bytes, u64::from(PIXEL_DATA_BYTES));
    assert_eq!(
        summary.instance_bytes,
        head_len + u64::from(PIXEL_DATA_BYTES)
    );
    assert!(
        source.largest_request <= 1024 * 1024,
        "validate asked for {} bytes at once",
        source.largest_request
    );

    // The same instance cut short: the pixel data declares more than remains.
    let present = u64::from(PIXEL_DATA_BYTES) / 3;
    match validate(Generated::new(PIXEL_DATA_BYTES, present)) {
        Err(DicomError::Truncated {
            tag,
            declared,
            available,
            offset,
            ..
        }) => {
            assert_eq!(tag, Some(Tag(0x7FE0, 0x0010)));
            assert_eq!(declared, u64::from(PIXEL_DATA_BYTES));
            assert_eq!(available, present);
            assert_eq!(offset, head_len);
        }
        other => panic!("{other:?}"),
    }

    if let (Some(before), Some(after)) = (before, peak_resident_bytes()) {
        assert!(
            after.saturating_sub(before) < PEAK_GROWTH_BYTES_MAX,
            "peak resident memory grew by {} bytes",
            after - before
        );
    }
}
