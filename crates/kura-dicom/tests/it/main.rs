//! Integration tests of kura-dicom: the shared corpus, the character-set
//! fixtures and synthetic instances built byte by byte.

mod builder;
mod charset;
mod corpus;
mod synthetic;
