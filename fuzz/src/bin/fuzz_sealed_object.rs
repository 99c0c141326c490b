//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/sealed_object -o /tmp/out-sealed_object <target>/debug/fuzz_sealed_object`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::sealed_object(data));
}
