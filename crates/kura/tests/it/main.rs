//! Integration tests of the `kura` binary, run as a process.

mod dicom_inspect;
