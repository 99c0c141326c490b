//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/dicom_identity -o /tmp/out-dicom_identity <target>/debug/fuzz_dicom_identity`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::dicom_identity(data));
}
