//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/meta_payload -o /tmp/out-meta_payload <target>/debug/fuzz_meta_payload`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::meta_payload(data));
}
