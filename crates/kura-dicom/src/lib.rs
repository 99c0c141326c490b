//! Kura's reading of DICOM Part-10 instances: what identifies an instance,
//! and whether it is whole.
//!
//! Pure: no async runtime, no network, no filesystem. Everything works on
//! byte slices and `std::io::Read`, so the gateway can run it on the chunks of
//! a Store stream and tests can run it on anything.
//!
//! - [`read_identity`] reads the UIDs (and patient, modality, date) from a
//!   *prefix* of the stream, asking for more with
//!   [`DicomError::NeedMoreData`] until it has them.
//! - [`validate`] walks the *complete* stream in bounded memory and refuses
//!   it if it is truncated or malformed anywhere, pixel data included.
//! - [`decode_person_name`] and [`decode_text`] decode text by the Specific
//!   Character Set, ISO 2022 code extensions (Japanese, Korean, Chinese)
//!   included.
//! - [`validate_uid`] holds the UID rules.
//!
//! All refusals are one [`DicomError`] with a stable [`DicomError::code`];
//! none of their messages carries patient data.

mod charset;
pub mod dimse;
mod error;
mod identity;
mod inflate;
mod part10;
mod uid;
mod validate;
mod walk;

pub mod synthetic;

pub use charset::{decode_person_name, decode_text};
pub use error::DicomError;
pub use identity::{Identity, read_identity};
pub use part10::{
    Envelope, IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, PREAMBLE_BYTES, envelope,
    file_meta, storable_transfer_syntaxes, transfer_syntax_name,
};
pub use uid::{UID_CHARS_MAX, UidProblem, validate_uid};
pub use validate::{Summary, validate, validate_with};
pub use walk::{CAPTURE_BYTES_MAX, ELEMENTS_MAX, NESTING_DEPTH_MAX, ParseLimits};

// A captured identifying value must hold the longest UID and its padding.
const _: () = assert!(CAPTURE_BYTES_MAX as usize > UID_CHARS_MAX);
