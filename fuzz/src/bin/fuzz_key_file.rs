//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/key_file -o /tmp/out-key_file <target>/debug/fuzz_key_file`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::key_file(data));
}
