//! `cargo afl build --features afl -p kura-fuzz`, then
//! `cargo afl fuzz -i fuzz/corpus/shard -o /tmp/out-shard <target>/debug/fuzz_shard`.
fn main() {
    afl::fuzz!(|data: &[u8]| kura_fuzz::shard(data));
}
