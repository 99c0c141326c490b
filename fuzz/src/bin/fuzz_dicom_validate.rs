//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/dicom_validate -o /tmp/out-dicom_validate <target>/debug/fuzz_dicom_validate`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::dicom_validate(data));
}
